"""The load test's connection monitor: pooled_postgres' connection watch, on the app's role.

The watch (pooled-postgres/src/pooled_postgres/watch.py) is what a user points at their
own deployment; here it samples while Locust runs, and each sample also carries the
load at that moment. Plain synchronous psycopg: under Locust, gevent's monkey-patching
makes it cooperative (psycopg detects gevent), and tests use it as is.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import make_conninfo

from pooled_postgres import watch
from pooled_postgres.watch import CONNECTION_COLUMNS, POOL_FIELDS, ConnectionWatch, read_samples
from probes.connections import APP_DATABASE, APP_ROLE, PGBOUNCER_INI, connection_bound

__all__ = ["CSV_COLUMNS", "POOL_FIELDS", "ConnectionMonitor", "MonitorDsns", "SampleLog", "read_samples"]

# The watch's columns, after what Locust adds to each sample.
CSV_COLUMNS = (
    "time",
    "elapsed_s",
    "phase",
    "users",
    "rps",
    "fail_per_s",
    "failures",
    "message_p50_ms",
    "message_p95_ms",
    *CONNECTION_COLUMNS,
)


@dataclass(frozen=True)
class MonitorDsns:
    postgres: str  # a role in pg_monitor (chat_monitor), straight to PostgreSQL
    pgbouncer: str | None  # a stats_users role on PgBouncer's console (pgbouncer_stats)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "MonitorDsns | None":
        """MONITOR_POSTGRES_DSN and MONITOR_PGBOUNCER_DSN; each DSN's password may instead be
        in the file MONITOR_*_PASSWORD_FILE names, so it is in no environment."""
        postgres = _with_password(environ, "MONITOR_POSTGRES")
        if not postgres:
            return None
        return cls(postgres, _with_password(environ, "MONITOR_PGBOUNCER") or None)


def _with_password(environ: Mapping[str, str], prefix: str) -> str:
    dsn = environ.get(f"{prefix}_DSN", "")
    password_file = environ.get(f"{prefix}_PASSWORD_FILE", "")
    if dsn and password_file:
        dsn = make_conninfo(dsn, password=Path(password_file).read_text().strip())
    return dsn


class ConnectionMonitor(ConnectionWatch):
    """pooled_postgres' connection watch on the app's role and database."""

    def __init__(self, dsns: MonitorDsns):
        super().__init__(dsns.postgres, dsns.pgbouncer, role=APP_ROLE, database=APP_DATABASE)

    def bound(self) -> tuple[int, str]:
        """The server-connection bound and where it was read: PgBouncer's ini in this
        checkout, else the running PgBouncer's SHOW CONFIG (a load test image without it)."""
        if PGBOUNCER_INI.exists():
            return connection_bound(), str(PGBOUNCER_INI.relative_to(PGBOUNCER_INI.parent.parent))
        return super().bound()

    def bound_or_reason(self) -> tuple[int | None, str]:
        """The bound and its source, or None and why it could not be read."""
        try:
            return self.bound()
        except RuntimeError as error:
            return None, str(error)


class SampleLog(watch.SampleLog):
    def __init__(self, directory: Path):
        super().__init__(directory, role=APP_ROLE, columns=CSV_COLUMNS)
