"""The leak: CONN_MAX_AGE > 0 under ASGI (pooled_postgres.E001)."""

SECRET_KEY = "a-test-key-that-is-long-enough-for-djangos-own-deploy-checks-0123456789"
INSTALLED_APPS = ["pooled_postgres"]
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "CONN_MAX_AGE": 60}}
