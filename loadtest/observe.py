"""What PostgreSQL and PgBouncer say about connections, and the bound the configs promise.

Shared by the load test's monitor, `make demo`'s checks and the tests, so each
number is computed one way only.
"""

import configparser
from collections import Counter
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
    section = parser["pgbouncer"]
    bound = section.getint("default_pool_size", 20) + section.getint("reserve_pool_size", 0)
    for cap in ("max_db_connections", "max_user_connections"):
        if section.getint(cap, 0) > 0:
            bound = min(bound, section.getint(cap))
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


def app_role_connections(counts: Counter) -> int:
    return sum(count for (role, _state), count in counts.items() if role == APP_ROLE)


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
    cursor = conn.execute(f"SHOW {what.upper()}")
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def app_pool(conn: psycopg.Connection) -> dict:
    """SHOW POOLS' row for the app's (database, role) pool, or zeros before first use."""
    for row in pgbouncer_show(conn, "POOLS"):
        if row["database"] == APP_DATABASE and row["user"] == APP_ROLE:
            return row
    return {"cl_active": 0, "cl_waiting": 0, "sv_active": 0, "sv_idle": 0, "sv_used": 0, "maxwait": 0}
