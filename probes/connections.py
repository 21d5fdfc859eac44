"""What PostgreSQL and PgBouncer say about connections, and the bound the configs promise.

Shared by the load test's monitor, `make demo`'s checks and the tests, so each
number is computed one way only.
"""

import configparser
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import psycopg

APP_ROLE = "chat_app"
APP_DATABASE = "chat"
PGBOUNCER_INI = Path(__file__).resolve().parent.parent / "pgbouncer" / "pgbouncer.ini"


def connection_bound(ini: Path = PGBOUNCER_INI) -> int:
    """Most server connections PgBouncer opens for the app role, read from pgbouncer.ini.

    default_pool_size + reserve_pool_size for the (database, user) pool, capped by
    max_db_connections / max_user_connections when those are set.
    """
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";",), comment_prefixes=(";", "#", "%"), interpolation=None
    )
    parser.read_string(ini.read_text())
    return bound_from_settings(parser["pgbouncer"])


def connection_bound_from_console(conn: psycopg.Connection) -> int:
    """The same bound from the settings a running PgBouncer reports (SHOW CONFIG).

    For a load test that reaches PgBouncer but has no copy of its ini file.
    """
    return bound_from_settings({row["key"]: row["value"] for row in pgbouncer_show(conn, "CONFIG")})


def bound_from_settings(settings: Mapping[str, str]) -> int:
    """One formula for both sources: pool size plus reserve, capped per database/user."""

    def setting(name: str, default: int) -> int:
        value = str(settings.get(name, "") or "").strip()
        return int(value) if value else default

    bound = setting("default_pool_size", 20) + setting("reserve_pool_size", 0)
    for cap in ("max_db_connections", "max_user_connections"):
        if setting(cap, 0) > 0:
            bound = min(bound, setting(cap, 0))
    return bound


def server_connections(conn: psycopg.Connection) -> Counter:
    """Backends connected to the app's database, counted by (role, state).

    Needs a role that sees every session (pg_monitor): chat_monitor. Its own
    session is left out.
    """
    rows = conn.execute(
        """
        SELECT usename, coalesce(state, 'unknown'), count(*)
        FROM pg_stat_activity
        WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
        GROUP BY 1, 2
        """,
        [APP_DATABASE],
    ).fetchall()
    return Counter({(role, state): count for role, state, count in rows})


def app_role_backend_pids(conn: psycopg.Connection) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s",
        [APP_DATABASE, APP_ROLE],
    ).fetchall()
    return {pid for (pid,) in rows}


def pgbouncer_show(conn: psycopg.Connection, what: str) -> list[dict]:
    """SHOW POOLS / SERVERS / CLIENTS / STATS on PgBouncer's console, rows as dicts.

    Columns vary between PgBouncer versions; read them by name.
    """
    if what.upper() not in {"POOLS", "SERVERS", "CLIENTS", "STATS", "DATABASES", "CONFIG"}:
        raise ValueError(f"unsupported SHOW {what}")
    # prepare=False: psycopg prepares a query it has run 5 times, and the admin
    # console refuses the extended protocol that needs.
    cursor = conn.execute(f"SHOW {what.upper()}", prepare=False)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def pgbouncer_server_pids(conn: psycopg.Connection, role: str = APP_ROLE) -> set[int]:
    """PostgreSQL backend PIDs of PgBouncer's server connections for a role (SHOW SERVERS)."""
    return {int(row["remote_pid"]) for row in pgbouncer_show(conn, "SERVERS") if row["user"] == role}


def app_pool(conn: psycopg.Connection) -> dict:
    """SHOW POOLS' row for the app's (database, role) pool, or zeros before first use."""
    for row in pgbouncer_show(conn, "POOLS"):
        if row["database"] == APP_DATABASE and row["user"] == APP_ROLE:
            return row
    return {"cl_active": 0, "cl_waiting": 0, "sv_active": 0, "sv_idle": 0, "sv_used": 0, "maxwait": 0}


def pool_server_connections(pool: Mapping) -> int:
    """Server connections a SHOW POOLS row says PgBouncer holds open: in use, idle, or just used."""
    return int(pool["sv_active"]) + int(pool["sv_idle"]) + int(pool["sv_used"])
