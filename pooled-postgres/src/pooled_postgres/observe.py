"""What PostgreSQL and PgBouncer say about a role's connections, and the bound PgBouncer promises.

Plain psycopg, no Django: the doctor, the connection watch, the chat page's pool panel and this
repository's load test compute each number one way only.
"""

import configparser
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import psycopg

SHOWABLE = {"POOLS", "SERVERS", "CLIENTS", "STATS", "DATABASES", "CONFIG"}


def first_line(error: Exception) -> str:
    """A database error as one line: psycopg's messages carry DETAIL and HINT lines below."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def bound_from_settings(settings: Mapping[str, str]) -> int:
    """Most server connections PgBouncer opens for one (database, user) pool, from its settings:
    default_pool_size + reserve_pool_size, capped by max_db_connections / max_user_connections
    when those are set (pgbouncer.ini's [pgbouncer] section, or SHOW CONFIG)."""

    def setting(name: str, default: int) -> int:
        value = str(settings.get(name, "") or "").strip()
        return int(value) if value else default

    bound = setting("default_pool_size", 20) + setting("reserve_pool_size", 0)
    for cap in ("max_db_connections", "max_user_connections"):
        if setting(cap, 0) > 0:
            bound = min(bound, setting(cap, 0))
    return bound


def bound_from_ini(path: Path) -> int:
    """The bound from a pgbouncer.ini file's [pgbouncer] section. Its %include lines are not
    followed: the pool's sizes belong in the file itself, not in what a deployment adds."""
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";",), comment_prefixes=(";", "#", "%"), interpolation=None
    )
    try:
        parser.read_string(path.read_text(), source=str(path))
    except configparser.Error as error:
        raise ValueError(f"{path} is not an ini file: {first_line(error)}") from error
    if not parser.has_section("pgbouncer"):
        raise ValueError(f"{path} has no [pgbouncer] section: is it PgBouncer's settings file?")
    return bound_from_settings(parser["pgbouncer"])


def pgbouncer_show(conn: psycopg.Connection, what: str) -> list[dict]:
    """SHOW POOLS / SERVERS / CLIENTS / STATS / DATABASES / CONFIG on PgBouncer's console, rows
    as dicts. Columns vary between PgBouncer versions; read them by name."""
    if what.upper() not in SHOWABLE:
        raise ValueError(f"unsupported SHOW {what}")
    # prepare=False: psycopg prepares a query it has run 5 times, and the admin
    # console refuses the extended protocol that needs.
    cursor = conn.execute(f"SHOW {what.upper()}", prepare=False)
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def bound_from_console(conn: psycopg.Connection) -> int:
    """The bound from the settings a running PgBouncer reports (SHOW CONFIG)."""
    return bound_from_settings({row["key"]: row["value"] for row in pgbouncer_show(conn, "CONFIG")})


def server_connections(conn: psycopg.Connection, database: str) -> Counter:
    """Backends connected to ``database``, counted by (role, state). Needs a role that sees every
    session (pg_monitor). The asking session is left out."""
    rows = conn.execute(
        """
        SELECT usename, coalesce(state, 'unknown'), count(*)
        FROM pg_stat_activity
        WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()
        GROUP BY 1, 2
        """,
        [database],
    ).fetchall()
    return Counter({(role, state): count for role, state, count in rows})


def role_connections(conn: psycopg.Connection, database: str, role: str) -> int:
    return sum(count for (who, _), count in server_connections(conn, database).items() if who == role)
