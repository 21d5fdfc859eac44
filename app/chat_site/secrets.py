"""Refuse to start on a missing, placeholder or weak secret."""

import re

from django.core.exceptions import ImproperlyConfigured

# .env.example ships values such as "change-me-django-secret-key"; lib/secrets.sh
# applies the same rule to the PostgreSQL and PgBouncer secrets.
PLACEHOLDER = re.compile(r"change-?me|placeholder", re.IGNORECASE)


def require_secret(env, name: str, min_length: int = 16) -> str:
    """Return the secret named ``name`` (or read from ``name``_FILE), or refuse with the fix."""
    value = env.str(name, default="").strip()  # files usually end with a newline
    hint = f"set {name}_FILE to the file that holds it (secrets/generate.py makes them all)"
    if not value:
        raise ImproperlyConfigured(f"{name} is not set: {hint}")
    if PLACEHOLDER.search(value):
        raise ImproperlyConfigured(f"{name} is still a placeholder: {hint}")
    if len(value) < min_length:
        raise ImproperlyConfigured(f"{name} is shorter than {min_length} characters: {hint}")
    return value
