"""Settings of the Django test project: the database comes from MIGRATE_TEST_DSN."""

import os

from psycopg.conninfo import conninfo_to_dict

_params = conninfo_to_dict(os.environ["MIGRATE_TEST_DSN"])

SECRET_KEY = "migrate-tests-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["leads"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _params["dbname"],
        "HOST": _params.get("host", ""),
        "PORT": _params.get("port", ""),
        "USER": _params.get("user", ""),
        "PASSWORD": _params.get("password", ""),
    }
}
