"""Django under ASGI behind a transaction pooler (PgBouncer), without leaking connections.

- ``ENGINE: "pooled_postgres"``: Django's PostgreSQL backend with a pool health check
  that costs no round trip (base.py);
- ``pooled_postgres.config.pooled_database()``: a ``DATABASES`` entry with every
  transaction-pooling-safe option, each with its reason;
- ``INSTALLED_APPS += ["pooled_postgres"]``: system checks that name the settings which
  leak connections or break under a transaction pooler (checks.py), and the
  ``pooler_doctor`` command that checks a live deployment.

Importing this package imports nothing from Django: settings modules may import it.
"""
