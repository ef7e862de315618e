"""A leads API written the way Django REST framework apps usually are, with outlast.

``ATOMIC_REQUESTS``, a ``ModelSerializer``, a ``ModelViewSet`` behind a
``DefaultRouter``, token authentication on the data routes, page-number
pagination, and writes through the ORM's ordinary ``serializer.save()``.
outlast is the few lines marked "outlast" in ``settings.py`` and ``urls.py``;
``OUTLAST_ENABLED=0`` runs the very same app without them.

Run it (from the ``examples`` directory)::

    export DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
    export DJANGO_SETTINGS_MODULE=django_app.settings
    python -m django migrate
    python -m django drilluser drill          # prints the API token of user "drill"
    gunicorn -w 4 django_app.wsgi:application # sync workers; or:
    uvicorn django_app.asgi:application

    curl -H "Authorization: Token <key>" http://127.0.0.1:8000/api/leads/
"""
