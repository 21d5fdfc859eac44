"""The connection monitor: what PostgreSQL and PgBouncer hold, sampled while load runs.

It keeps its two connections open for the whole run on purpose: the leaking
configuration fills PostgreSQL's connection slots, and a monitor that connected
per sample would be refused exactly when the numbers matter. A connection that
breaks is reopened at the next sample; meanwhile samples say ``None``.

Plain synchronous psycopg: under Locust, gevent's monkey-patching makes it
cooperative (psycopg detects gevent), and tests use it as is.
"""

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psycopg
from psycopg.conninfo import make_conninfo

from probes.connections import (
    APP_ROLE,
    PGBOUNCER_INI,
    app_pool,
    app_role_backend_pids,
    connection_bound,
    connection_bound_from_console,
    pgbouncer_server_pids,
    server_connections,
)

POOL_FIELDS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait")
# The CSV's columns, flat; the JSON lines keep the full per-role breakdown.
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
    "app_server_connections",
    "app_direct",
    "app_active",
    "app_idle",
    "other_server_connections",
    *(f"pgbouncer_{name}" for name in POOL_FIELDS),
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


class ConnectionMonitor:
    def __init__(self, dsns: MonitorDsns):
        self.dsns = dsns
        self._postgres: psycopg.Connection | None = None
        self._pgbouncer: psycopg.Connection | None = None

    def open(self) -> None:
        """Connect now (before load), so the leak cannot lock the monitor out later."""
        self._connect()

    def close(self) -> None:
        for conn in (self._postgres, self._pgbouncer):
            if conn is not None:
                conn.close()
        self._postgres = self._pgbouncer = None

    def sample(self) -> dict:
        """One reading: server connections by role and state, and the app's PgBouncer pool."""
        self._connect()
        reading = {"server_connections": None, "app_server_connections": None, "pgbouncer_pool": None}
        if self._postgres is not None:
            try:
                counts = server_connections(self._postgres)
            except psycopg.Error as error:
                reading["postgres_error"] = _one_line(error)
                self._postgres = _closed(self._postgres)
            else:
                by_role: dict[str, dict[str, int]] = {}
                for (role, state), count in sorted(counts.items()):
                    by_role.setdefault(role, {})[state] = count
                reading["server_connections"] = by_role
                reading["app_server_connections"] = sum(by_role.get(APP_ROLE, {}).values())
        if self._pgbouncer is not None:
            try:
                pool = app_pool(self._pgbouncer)
            except psycopg.Error as error:
                reading["pgbouncer_error"] = _one_line(error)
                self._pgbouncer = _closed(self._pgbouncer)
            else:
                reading["pgbouncer_pool"] = {name: int(pool.get(name, 0)) for name in POOL_FIELDS}
        if reading["server_connections"] is not None and reading["pgbouncer_pool"] is not None:
            reading["app_direct"] = self._direct_connections()
        return reading

    def _direct_connections(self) -> int | None:
        """App-role backends that are not PgBouncer's server connections: the app's own.

        Two queries a moment apart: a server connection PgBouncer opens in between can
        count as direct for one sample.
        """
        try:
            via_pgbouncer = pgbouncer_server_pids(self._pgbouncer)
            return len(app_role_backend_pids(self._postgres) - via_pgbouncer)
        except psycopg.Error:
            return None

    def bound(self) -> tuple[int, str]:
        """The server-connection bound and where it was read: PgBouncer's ini in this
        checkout, else the running PgBouncer's SHOW CONFIG (a load test image without it)."""
        if PGBOUNCER_INI.exists():
            return connection_bound(), str(PGBOUNCER_INI.relative_to(PGBOUNCER_INI.parent.parent))
        self._connect()
        if self._pgbouncer is None:
            raise RuntimeError("no pgbouncer.ini here and no PgBouncer console to read the bound from")
        return connection_bound_from_console(self._pgbouncer), "PgBouncer SHOW CONFIG"

    def max_connections(self) -> int | None:
        self._connect()
        if self._postgres is None:
            return None
        try:
            return int(self._postgres.execute("SHOW max_connections").fetchone()[0])
        except psycopg.Error:
            self._postgres = _closed(self._postgres)
            return None

    def _connect(self) -> None:
        if self._postgres is None:
            self._postgres = _try_connect(self.dsns.postgres)
        if self._pgbouncer is None and self.dsns.pgbouncer:
            self._pgbouncer = _try_connect(self.dsns.pgbouncer)


def _try_connect(dsn: str) -> psycopg.Connection | None:
    try:
        # No prepared statements: the PgBouncer console cannot run them.
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3, prepare_threshold=None)
    except psycopg.Error:
        return None


def _closed(conn: psycopg.Connection) -> None:
    """Close a connection that failed; returns None, its replacement until it reconnects."""
    conn.close()


def _one_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def flat_row(sample: dict) -> dict:
    """A sample as one CSV row (CSV_COLUMNS)."""
    app = (sample.get("server_connections") or {}).get(APP_ROLE, {})
    everyone = sample.get("server_connections")
    others = None
    if everyone is not None:
        others = sum(n for role, states in everyone.items() if role != APP_ROLE for n in states.values())
    pool = sample.get("pgbouncer_pool") or {}
    row = {name: sample.get(name) for name in CSV_COLUMNS}
    row.update(
        app_active=app.get("active", 0) if everyone is not None else None,
        app_idle=app.get("idle", 0) if everyone is not None else None,
        other_server_connections=others,
        **{f"pgbouncer_{name}": pool.get(name) for name in POOL_FIELDS},
    )
    return row


class SampleLog:
    """Samples as JSON lines (everything) and CSV (flat), flushed as they come."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = directory / "samples.jsonl"
        self.csv_path = directory / "samples.csv"
        self._jsonl: IO[str] = self.jsonl_path.open("w")
        self._csv_file: IO[str] = self.csv_path.open("w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS)
        self._csv.writeheader()

    def write(self, sample: dict) -> None:
        self._jsonl.write(json.dumps(sample, separators=(",", ":")) + "\n")
        self._jsonl.flush()
        self._csv.writerow(flat_row(sample))
        self._csv_file.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
