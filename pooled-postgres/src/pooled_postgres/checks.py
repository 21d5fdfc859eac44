"""System checks: settings that leak connections under ASGI, or break behind a transaction pooler.

Run by ``manage.py check`` (and ``check --deploy``). A database is behind a transaction
pooler when its ``DATABASES`` entry says so: ``"POOLER": {"MODE": "transaction"}``
(``pooled_database()`` writes it); nothing is guessed from a host or a port.
``ASGI_PROCESSES``, if set, is how many processes serve the project, all hosts together.
"""

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.db import connections

DJANGO_DOCS = "https://docs.djangoproject.com/en/stable/ref/databases/"
IN_MEMORY_LAYER = "channels.layers.InMemoryChannelLayer"


def _entries() -> list[tuple[str, dict[str, Any]]]:
    """Every DATABASES entry, with Django's defaults filled in. Settings only: no check here
    queries a database, so Django's `databases` argument (which ones may be queried) is moot."""
    return [(alias, connections.settings[alias]) for alias in connections.settings]


def _transaction_pooled(entry: dict[str, Any]) -> bool:
    return (entry.get("POOLER") or {}).get("MODE") == "transaction"


def _pool_max_size(entry: dict[str, Any]) -> int | None:
    """Django's pool size per process for this entry (psycopg_pool's defaults), None without one."""
    pool = entry.get("OPTIONS", {}).get("pool")
    if not pool:
        return None
    if pool is True:
        pool = {}
    min_size = pool.get("min_size", 4)
    return pool.get("max_size") or min_size


def _asgi_processes() -> int | None:
    return getattr(settings, "ASGI_PROCESSES", None)


@register("pooled_postgres", Tags.compatibility)
def check_persistent_connections_under_asgi(app_configs=None, **kwargs) -> list:
    if not getattr(settings, "ASGI_APPLICATION", None):
        return []
    return [
        Error(
            f"DATABASES[{alias!r}] keeps connections open (CONN_MAX_AGE={entry['CONN_MAX_AGE']!r}) "
            "under an ASGI server: each request's sync work runs on a thread of its own, whose "
            "connection outlives the request and the thread, and they pile up until the "
            "server refuses clients ('too many clients already').",
            hint="Set CONN_MAX_AGE to 0 and put a pool in front: Django's (OPTIONS['pool']) and a "
            f"transaction pooler such as PgBouncer. {DJANGO_DOCS}#persistent-connections",
            id="pooled_postgres.E001",
        )
        for alias, entry in _entries()
        if entry.get("CONN_MAX_AGE") != 0 and "sqlite" not in entry.get("ENGINE", "")
    ]


@register("pooled_postgres", Tags.compatibility)
def check_transaction_pooler_options(app_configs=None, **kwargs) -> list:
    found = []
    for alias, entry in _entries():
        if not _transaction_pooled(entry):
            continue
        where = f"DATABASES[{alias!r}] is behind a transaction pooler"
        options = entry.get("OPTIONS", {})
        if not entry.get("DISABLE_SERVER_SIDE_CURSORS"):
            found.append(
                Error(
                    f"{where} with server-side cursors enabled: QuerySet.iterator() declares a "
                    "cursor whose later fetches can land on another server connection "
                    "('cursor ... does not exist').",
                    hint="Set DISABLE_SERVER_SIDE_CURSORS to True. "
                    f"{DJANGO_DOCS}#transaction-pooling-server-side-cursors",
                    id="pooled_postgres.E002",
                )
            )
        if options.get("server_side_binding"):
            found.append(
                Error(
                    f"{where} with server_side_binding on: prepared statements live on one "
                    "server connection, and fail on the next ('prepared statement ... does not "
                    "exist') unless the pooler tracks them (PgBouncer 1.21+ with "
                    "max_prepared_statements, and libpq 17 for Django's unnamed ones).",
                    hint="Remove OPTIONS['server_side_binding'] (client-side binding is Django's "
                    f"default). {DJANGO_DOCS}#server-side-parameters-binding",
                    id="pooled_postgres.E003",
                )
            )
        if entry.get("ATOMIC_REQUESTS"):
            found.append(
                Warning(
                    f"{where} with ATOMIC_REQUESTS on: each request holds a server connection "
                    "from its first query to its response, template rendering included, so "
                    "the pool's few server connections serve fewer requests.",
                    hint="Set ATOMIC_REQUESTS to False and wrap only the writes that must be "
                    "atomic in transaction.atomic(). "
                    "https://docs.djangoproject.com/en/stable/topics/db/transactions/",
                    id="pooled_postgres.W004",
                )
            )
        startup_options = str(options.get("options", ""))
        session_options = [
            name
            for name, present in (
                ("options", "-c" in startup_options or "--" in startup_options),
                ("assume_role", bool(options.get("assume_role"))),
            )
            if present
        ]
        if session_options:
            found.append(
                Error(
                    f"{where} with session settings in OPTIONS ({', '.join(session_options)}): "
                    "a transaction pooler does not pass them to the server connection each "
                    "transaction lands on (PgBouncer refuses unknown startup parameters, and "
                    "a SET ROLE stays on a server connection other clients then use).",
                    hint="Set them on the role instead (ALTER ROLE ... SET ...), or in "
                    "postgresql.conf, and remove them from OPTIONS.",
                    id="pooled_postgres.E005",
                )
            )
        found.extend(_time_zone(alias, entry))
        found.extend(_pool_within_pooler(alias, entry))
    return found


def _time_zone(alias: str, entry: dict[str, Any]) -> list:
    # What Django asks every new connection for (DatabaseWrapper.timezone_name); it sends
    # SET TIME ZONE whenever the server reports another. Restated, not read from the
    # wrapper: building one imports the backend and psycopg's libpq, which `manage.py
    # check` must not need (tests/compose/test_package_on_django_6.py has no libpq).
    wanted = (entry.get("TIME_ZONE") or "UTC") if settings.USE_TZ else settings.TIME_ZONE
    server = (entry.get("POOLER") or {}).get("SERVER_TIME_ZONE", "UTC")
    if wanted == server:
        return []
    return [
        Warning(
            f"DATABASES[{alias!r}]: Django wants the time zone {wanted!r} and the server is "
            f"declared as {server!r}, so every new connection sends SET TIME ZONE, session "
            "state that a transaction pooler has to replay on each server connection.",
            hint="Use USE_TZ = True (Django then asks for UTC), or set PostgreSQL's timezone to "
            f"{wanted!r} and declare it: DATABASES[{alias!r}]['POOLER']['SERVER_TIME_ZONE'].",
            id="pooled_postgres.W006",
        )
    ]


def _pool_within_pooler(alias: str, entry: dict[str, Any]) -> list:
    max_client_conn = (entry.get("POOLER") or {}).get("MAX_CLIENT_CONN")
    pool_size, processes = _pool_max_size(entry), _asgi_processes()
    if None in (max_client_conn, pool_size, processes) or pool_size * processes <= max_client_conn:
        return []
    return [
        Error(
            f"DATABASES[{alias!r}]: {processes} processes (ASGI_PROCESSES) x a pool of "
            f"{pool_size} open up to {pool_size * processes} client connections, more than "
            f"the pooler accepts (MAX_CLIENT_CONN {max_client_conn}): the last pools to fill "
            "are refused.",
            hint="Raise max_client_conn in pgbouncer.ini (and POOLER['MAX_CLIENT_CONN']), or "
            "lower OPTIONS['pool']['max_size'].",
            id="pooled_postgres.E007",
        )
    ]


@register("pooled_postgres", Tags.compatibility)
def check_channel_layer_across_processes(app_configs=None, **kwargs) -> list:
    processes = _asgi_processes()
    layers = getattr(settings, "CHANNEL_LAYERS", None)
    if processes is None or processes < 2 or layers is None:
        return []
    return [
        Error(
            f"CHANNEL_LAYERS[{alias!r}] is the in-memory layer, and {processes} processes serve "
            "the project (ASGI_PROCESSES): a group_send reaches only the members connected to "
            "the same process.",
            hint="Use a layer every process shares, e.g. channels_redis' "
            "RedisPubSubChannelLayer. https://channels.readthedocs.io/en/stable/topics/channel_layers.html",
            id="pooled_postgres.E008",
        )
        for alias, layer in layers.items()
        if layer.get("BACKEND") == IN_MEMORY_LAYER
    ]
