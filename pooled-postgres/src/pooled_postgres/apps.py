from django.apps import AppConfig


class PooledPostgresConfig(AppConfig):
    name = "pooled_postgres"
    verbose_name = "PostgreSQL behind a transaction pooler"

    def ready(self) -> None:
        from pooled_postgres import checks  # noqa: F401  (registers the system checks)
