"""Watch a deployment's PostgreSQL server connections and PgBouncer pool, under its own traffic.

    python -m pooled_postgres.watch --role app --database app \\
        --postgres-dsn "host=db dbname=app user=monitor passfile=~/.pgpass" \\
        --pgbouncer-dsn "host=pgbouncer port=6432 dbname=pgbouncer user=stats passfile=~/.pgpass"

Every few seconds: a line on the terminal, a row in samples.csv (and samples.jsonl);
at the end (--duration, or Ctrl-C) the plot connections.png, if matplotlib is installed.
The PostgreSQL role needs pg_monitor (to see every session); the PgBouncer one is a
stats_users entry of its console, and gives the pool (clients waiting, maxwait) and
the bound. Nothing here is specific to one app: the role and database are options.

The watch keeps its two connections open for the whole run on purpose: a leaking app
fills PostgreSQL's connection slots, and a watch that connected per sample would be
refused exactly when the numbers matter. A connection that breaks is reopened at the
next sample; meanwhile samples say None.
"""

import argparse
import csv
import json
import signal
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import psycopg

from pooled_postgres.observe import bound_from_console, first_line, pgbouncer_show, server_connections

POOL_FIELDS = ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used", "maxwait")
# The CSV's columns, flat; the JSON lines keep the full per-role breakdown.
CONNECTION_COLUMNS = (
    "app_server_connections",
    "app_direct",
    "app_active",
    "app_idle",
    "other_server_connections",
    *(f"pgbouncer_{name}" for name in POOL_FIELDS),
)
WATCH_COLUMNS = ("time", "elapsed_s", *CONNECTION_COLUMNS)


def pool_row(conn: psycopg.Connection, database: str, role: str) -> dict:
    """SHOW POOLS' row for a (database, role) pool, or zeros before its first use."""
    for row in pgbouncer_show(conn, "POOLS"):
        if row["database"] == database and row["user"] == role:
            return row
    return dict.fromkeys(POOL_FIELDS, 0)


def pgbouncer_server_pids(conn: psycopg.Connection, role: str) -> set[int]:
    """PostgreSQL backend PIDs of PgBouncer's server connections for a role (SHOW SERVERS)."""
    return {int(row["remote_pid"]) for row in pgbouncer_show(conn, "SERVERS") if row["user"] == role}


def role_backend_pids(conn: psycopg.Connection, database: str, role: str) -> set[int]:
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s", [database, role]
    ).fetchall()
    return {pid for (pid,) in rows}


class ConnectionWatch:
    """Samples what PostgreSQL holds for ``role`` on ``database`` and PgBouncer's pool for them."""

    def __init__(self, postgres_dsn: str, pgbouncer_dsn: str | None, *, role: str, database: str):
        self.postgres_dsn, self.pgbouncer_dsn = postgres_dsn, pgbouncer_dsn
        self.role, self.database = role, database
        self._postgres: psycopg.Connection | None = None
        self._pgbouncer: psycopg.Connection | None = None

    def open(self) -> bool:
        """Connect now (before load), so the leak cannot lock the watch out later. Whether
        PostgreSQL answered."""
        self._connect()
        return self._postgres is not None

    def close(self) -> None:
        for conn in (self._postgres, self._pgbouncer):
            if conn is not None:
                conn.close()
        self._postgres = self._pgbouncer = None

    def sample(self) -> dict:
        """One reading: server connections by role and state, and the role's PgBouncer pool."""
        self._connect()
        reading = {"server_connections": None, "app_server_connections": None, "pgbouncer_pool": None}
        if self._postgres is not None:
            try:
                counts = server_connections(self._postgres, self.database)
            except psycopg.Error as error:
                reading["postgres_error"] = first_line(error)
                self._postgres = _closed(self._postgres)
            else:
                by_role: dict[str, dict[str, int]] = {}
                for (role, state), count in sorted(counts.items()):
                    by_role.setdefault(role, {})[state] = count
                reading["server_connections"] = by_role
                reading["app_server_connections"] = sum(by_role.get(self.role, {}).values())
        if self._pgbouncer is not None:
            try:
                pool = pool_row(self._pgbouncer, self.database, self.role)
            except psycopg.Error as error:
                reading["pgbouncer_error"] = first_line(error)
                self._pgbouncer = _closed(self._pgbouncer)
            else:
                reading["pgbouncer_pool"] = {name: int(pool.get(name, 0)) for name in POOL_FIELDS}
        if reading["server_connections"] is not None and reading["pgbouncer_pool"] is not None:
            reading["app_direct"] = self._direct_connections()
        return reading

    def _direct_connections(self) -> int | None:
        """The role's backends that are not PgBouncer's server connections: around the pooler.

        Two queries a moment apart: a server connection PgBouncer opens in between can
        count as direct for one sample.
        """
        try:
            via_pgbouncer = pgbouncer_server_pids(self._pgbouncer, self.role)
            return len(role_backend_pids(self._postgres, self.database, self.role) - via_pgbouncer)
        except psycopg.Error:
            return None

    def bound(self) -> tuple[int, str]:
        """The server-connection bound, from the running PgBouncer's SHOW CONFIG."""
        self._connect()
        if self._pgbouncer is None:
            raise RuntimeError("no PgBouncer console to read the bound from: give --pgbouncer-dsn or --bound")
        return bound_from_console(self._pgbouncer), "PgBouncer SHOW CONFIG"

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
            self._postgres = _try_connect(self.postgres_dsn)
        if self._pgbouncer is None and self.pgbouncer_dsn:
            self._pgbouncer = _try_connect(self.pgbouncer_dsn)


def _try_connect(dsn: str) -> psycopg.Connection | None:
    try:
        # No prepared statements: the PgBouncer console cannot run them.
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3, prepare_threshold=None)
    except psycopg.Error:
        return None


def _closed(conn: psycopg.Connection) -> None:
    """Close a connection that failed; returns None, its replacement until it reconnects."""
    conn.close()


def flat_row(sample: dict, role: str, columns: Iterable[str]) -> dict:
    """A sample as one CSV row."""
    mine = (sample.get("server_connections") or {}).get(role, {})
    everyone = sample.get("server_connections")
    others = None
    if everyone is not None:
        others = sum(n for who, states in everyone.items() if who != role for n in states.values())
    pool = sample.get("pgbouncer_pool") or {}
    row = {name: sample.get(name) for name in columns}
    row.update(
        app_active=mine.get("active", 0) if everyone is not None else None,
        app_idle=mine.get("idle", 0) if everyone is not None else None,
        other_server_connections=others,
        **{f"pgbouncer_{name}": pool.get(name) for name in POOL_FIELDS},
    )
    return row


class SampleLog:
    """Samples as JSON lines (everything) and CSV (flat), flushed as they come."""

    def __init__(self, directory: Path, *, role: str, columns: tuple[str, ...] = WATCH_COLUMNS):
        directory.mkdir(parents=True, exist_ok=True)
        self.role, self.columns = role, columns
        self.jsonl_path = directory / "samples.jsonl"
        self.csv_path = directory / "samples.csv"
        self._jsonl: IO[str] = self.jsonl_path.open("w")
        self._csv_file: IO[str] = self.csv_path.open("w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=columns)
        self._csv.writeheader()

    def write(self, sample: dict) -> None:
        self._jsonl.write(json.dumps(sample, separators=(",", ":")) + "\n")
        self._jsonl.flush()
        self._csv.writerow(flat_row(sample, self.role, self.columns))
        self._csv_file.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def draw_connections(axis, samples: list[dict], *, bound: int, max_connections: int | None) -> None:
    """One panel: the role's server connections and PgBouncer's clients against the bound."""
    t = [s["elapsed_s"] for s in samples]
    pool = [s.get("pgbouncer_pool") or {} for s in samples]
    axis.plot(
        t,
        [s.get("app_server_connections") for s in samples],
        color="tab:red",
        lw=2,
        label="PostgreSQL server connections (app role)",
    )
    axis.plot(
        t,
        [p.get("cl_active") for p in pool],
        color="tab:blue",
        lw=1.2,
        ls="--",
        label="PgBouncer clients active",
    )
    axis.plot(
        t,
        [p.get("cl_waiting") for p in pool],
        color="tab:purple",
        lw=1.2,
        ls=":",
        label="PgBouncer clients waiting",
    )
    axis.axhline(bound, color="black", ls="-.", lw=1, label=f"bound ({bound})")
    if max_connections:
        axis.axhline(
            max_connections,
            color="grey",
            ls=":",
            lw=1,
            label=f"PostgreSQL max_connections ({max_connections})",
        )
    axis.set_xlabel("seconds")
    axis.grid(alpha=0.3)


def plot(samples: list[dict], *, role: str, bound: int, max_connections: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.8))
    draw_connections(axis, samples, bound=bound, max_connections=max_connections)
    axis.set_ylabel("connections")
    axis.set_title(f"{role}: PostgreSQL server connections and PgBouncer clients")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def live_line(sample: dict, bound: int) -> str:
    held = sample.get("app_server_connections")
    pool = sample.get("pgbouncer_pool")
    parts = [
        f"server connections {'?' if held is None else held} (bound {bound})",
        f"around the pooler {sample.get('app_direct', '?')}",
    ]
    if pool is not None:
        parts.append(
            f"PgBouncer clients {pool['cl_active']} active, {pool['cl_waiting']} waiting, "
            f"maxwait {pool['maxwait']} s"
        )
    for error in ("postgres_error", "pgbouncer_error"):
        if error in sample:
            parts.append(f"{error.split('_')[0]}: {sample[error]}")
    over = " OVER THE BOUND" if held is not None and held > bound else ""
    return f"{sample['time'][11:19]}  " + "  |  ".join(parts) + over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pooled_postgres.watch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--postgres-dsn", required=True, help="a pg_monitor role, straight to PostgreSQL")
    parser.add_argument("--pgbouncer-dsn", help="PgBouncer's console, a stats_users role")
    parser.add_argument("--role", required=True, help="the role the app logs in as")
    parser.add_argument("--database", required=True, help="the app's database")
    parser.add_argument(
        "--bound", type=int, help="the most server connections allowed (default: PgBouncer's)"
    )
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples (default 2)")
    parser.add_argument("--duration", type=float, default=0, help="seconds to watch (default: until Ctrl-C)")
    parser.add_argument("--out", type=Path, default=Path("watch"), help="where samples and the plot go")
    args = parser.parse_args(argv)

    watch = ConnectionWatch(args.postgres_dsn, args.pgbouncer_dsn, role=args.role, database=args.database)
    if not watch.open():
        print(f"error: cannot connect with --postgres-dsn {args.postgres_dsn!r}", file=sys.stderr)
        return 2
    try:
        bound = args.bound if args.bound is not None else watch.bound()[0]
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    max_connections = watch.max_connections()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C: plot, then exit
    log, samples, start = SampleLog(args.out, role=args.role), [], time.monotonic()
    print(
        f"watching {args.role} on {args.database}: bound {bound}, max_connections {max_connections}; "
        f"samples in {log.csv_path}",
        flush=True,
    )
    try:
        while not args.duration or time.monotonic() - start < args.duration:
            sample = {
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "elapsed_s": round(time.monotonic() - start, 1),
                **watch.sample(),
            }
            log.write(sample)
            samples.append(sample)
            print(live_line(sample, bound), flush=True)
            time.sleep(args.every)
    except KeyboardInterrupt:
        pass
    finally:
        log.close()
        watch.close()
    peak = max((s["app_server_connections"] or 0 for s in samples), default=0)
    verdict = "within" if peak <= bound else "OVER"
    print(f"peak {peak} server connections for {args.role}, {verdict} the bound {bound}")
    try:
        plot(
            samples,
            role=args.role,
            bound=bound,
            max_connections=max_connections,
            path=args.out / "connections.png",
        )
        print(f"plot: {args.out / 'connections.png'}")
    except ImportError:
        print("no plot: pip install matplotlib for connections.png")
    return 0 if peak <= bound else 1


if __name__ == "__main__":
    sys.exit(main())
