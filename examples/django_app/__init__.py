"""A leads API on Django (ORM), with or without outlast.

Run it (from the ``examples`` directory)::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres OUTLAST_ENABLED=1 \\
    gunicorn -k gthread --threads 8 django_app.wsgi:application
"""
