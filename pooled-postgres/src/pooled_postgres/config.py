"""A ``DATABASES`` entry for Django behind a transaction pooler (PgBouncer, pool_mode = transaction).

A transaction pooler hands each transaction to whichever server connection is free,
so no state may outlive a transaction on the server; and under an ASGI server, no
connection may outlive its request. Each option below is set for one of those two
reasons, and the system checks (checks.py) flag a configuration that drops it.
"""

from typing import Any

HEALTH_CHECK_ENGINES = {
    # Django's backend with a check that looks at the socket, and queries only when the
    # server went away (base.py): no second round trip per checkout.
    "socket": "pooled_postgres",
    # Django's own: an empty query before every checkout.
    "query": "django.db.backends.postgresql",
}


def pooled_database(
    connection: dict[str, Any],
    *,
    pool_max_size: int = 4,
    pool_min_size: int = 1,
    pool_timeout: float = 5.0,
    health_check: str = "socket",
    pooler_max_client_conn: int | None = None,
) -> dict[str, Any]:
    """The ``DATABASES`` entry for ``connection`` (NAME, USER, HOST, ... as from a URL) behind a
    transaction pooler, with Django's pool of at most ``pool_max_size`` connections per process
    (0: no pool, a connection per request). ``pooler_max_client_conn`` is the pooler's
    ``max_client_conn``, if known: the checks compare it with pool size x ASGI_PROCESSES.
    """
    if health_check not in HEALTH_CHECK_ENGINES:
        choices = ", ".join(HEALTH_CHECK_ENGINES)
        raise ValueError(f"health_check must be one of {choices}, not {health_check!r}")
    pooler: dict[str, Any] = {"MODE": "transaction"}
    if pooler_max_client_conn is not None:
        pooler["MAX_CLIENT_CONN"] = pooler_max_client_conn
    return {
        **connection,
        "ENGINE": HEALTH_CHECK_ENGINES[health_check],
        # Declares what sits between Django and PostgreSQL; the checks read it.
        "POOLER": pooler,
        # 0 = close after each request / database_sync_to_async call. Under Daphne each
        # HTTP request runs on its own thread, and a persistent per-thread connection is
        # never closed: PostgreSQL (or the pooler's max_client_conn) runs out of slots.
        # https://docs.djangoproject.com/en/5.2/ref/databases/#persistent-connections
        "CONN_MAX_AGE": 0,
        # Check a connection before reusing it, so a pooler restart costs a reconnect
        # rather than a failed request. With the pool on, psycopg_pool runs the check.
        "CONN_HEALTH_CHECKS": True,
        # QuerySet.iterator() would DECLARE a server-side cursor whose later FETCHes can
        # land on another server connection ("cursor ... does not exist").
        # https://docs.djangoproject.com/en/5.2/ref/databases/#transaction-pooling-server-side-cursors
        "DISABLE_SERVER_SIDE_CURSORS": True,
        # A transaction per view would hold a server connection for the whole request,
        # template rendering included; autocommit holds one per statement.
        "ATOMIC_REQUESTS": False,
        "OPTIONS": {
            # Client-side binding, Django's default with psycopg 3, is kept: server-side
            # prepared statements live on one server connection and fail under
            # transaction pooling (PgBouncer before 1.21).
            # https://docs.djangoproject.com/en/5.2/ref/databases/#server-side-parameters-binding
            **_pool_options(pool_max_size, pool_min_size, pool_timeout),
            **connection.get("OPTIONS", {}),  # the URL's: sslmode, sslrootcert
        },
    }


def _pool_options(max_size: int, min_size: int, timeout: float) -> dict[str, Any]:
    """Django's pool: logged-in connections reused across requests, so a request does not
    pay a TLS and SCRAM handshake with the pooler. CONN_MAX_AGE stays 0 (the pool needs it).
    https://docs.djangoproject.com/en/5.2/ref/databases/#connection-pool
    """
    if max_size == 0:
        return {}
    return {
        "pool": {
            "min_size": min(min_size, max_size),
            "max_size": max_size,
            # Waiting longer than this for a connection (all busy, or the pooler down)
            # raises PoolTimeout instead of hanging. Queries take milliseconds: seconds
            # of waiting mean trouble.
            "timeout": timeout,
            # psycopg_pool retries a failed connection after 1, 2, 4, 8, 16 s... for up to
            # reconnect_timeout (5 minutes by default): after the pooler was away for 15 s,
            # its next try can come 16 s after the pooler is back, and every request
            # meanwhile times out. Ending each attempt once a request would have given up
            # on it caps the wait: the next request starts a fresh attempt at once.
            "reconnect_timeout": timeout,
        }
    }
