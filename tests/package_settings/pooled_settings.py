"""pooled_database(), as the README shows it: no issues."""

from pooled_postgres.config import pooled_database

SECRET_KEY = "a-test-key-that-is-long-enough-for-djangos-own-deploy-checks-0123456789"
INSTALLED_APPS = ["pooled_postgres"]
ASGI_APPLICATION = "mysite.asgi.application"
USE_TZ = True
DATABASES = {"default": pooled_database({"NAME": "app", "HOST": "pgbouncer", "PORT": "6432"})}
