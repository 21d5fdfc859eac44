"""What PostgreSQL and PgBouncer say about connections, and the bound the configs promise.

Shared by the load test's monitor, `make demo`'s checks and the tests, so each
number is computed one way only.
"""

from collections.abc import Mapping
from pathlib import Path

import psycopg

from pooled_postgres import watch
from pooled_postgres.observe import bound_from_ini

APP_ROLE = "chat_app"
APP_DATABASE = "chat"
PGBOUNCER_INI = Path(__file__).resolve().parent.parent / "pgbouncer" / "pgbouncer.ini"


def connection_bound(ini: Path = PGBOUNCER_INI) -> int:
    """Most server connections PgBouncer opens for the app role, read from pgbouncer.ini.

    default_pool_size + reserve_pool_size for the (database, user) pool, capped by
    max_db_connections / max_user_connections when those are set.
    """
    return bound_from_ini(ini)


def app_role_backend_pids(conn: psycopg.Connection) -> set[int]:
    return watch.role_backend_pids(conn, APP_DATABASE, APP_ROLE)


def app_pool(conn: psycopg.Connection) -> dict:
    """SHOW POOLS' row for the app's (database, role) pool, or zeros before first use."""
    return watch.pool_row(conn, APP_DATABASE, APP_ROLE)


def pool_server_connections(pool: Mapping) -> int:
    """Server connections a SHOW POOLS row says PgBouncer holds open: in use, idle, or just used."""
    return int(pool["sv_active"]) + int(pool["sv_idle"]) + int(pool["sv_used"])
