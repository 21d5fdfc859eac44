"""`python -m pooled_postgres.watch` pointed at the running native stack, as a user points it at theirs."""

import csv
import subprocess
import sys

from pooled_postgres.watch import WATCH_COLUMNS


def watch(passfile_dsns, out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pooled_postgres.watch",
            "--postgres-dsn",
            passfile_dsns["monitor"],
            "--pgbouncer-dsn",
            passfile_dsns["console"],
            "--role",
            "chat_app",
            "--database",
            "chat",
            "--every",
            "0.5",
            "--duration",
            "3",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_it_shows_connections_within_the_bound_live_in_csv_and_as_a_plot(
    open_transactions, passfile_dsns, tmp_path
):
    with open_transactions(3):
        result = watch(passfile_dsns, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("watching chat_app on chat: bound 12, max_connections ")
    live = [line for line in lines if "server connections" in line and "PgBouncer clients" in line]
    assert len(live) >= 4, result.stdout  # a line every 0.5 s for 3 s
    assert "peak " in lines[-2] and "within the bound 12" in lines[-2]
    assert lines[-1] == f"plot: {tmp_path / 'connections.png'}"
    assert (tmp_path / "connections.png").stat().st_size > 10_000
    with (tmp_path / "samples.csv").open() as samples:
        rows = list(csv.DictReader(samples))
    assert tuple(rows[0]) == WATCH_COLUMNS
    assert len(rows) == len(live)
    # The three open transactions are three busy server connections and three active clients.
    assert max(int(row["app_server_connections"]) for row in rows) >= 3
    assert max(int(row["pgbouncer_cl_active"]) for row in rows) >= 3
    assert {row["app_direct"] for row in rows} == {"0"}  # everything came through PgBouncer


def test_over_the_bound_it_says_so_and_exits_1(open_transactions, passfile_dsns, tmp_path):
    with open_transactions(2):
        result = watch(passfile_dsns, tmp_path, "--bound", "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "OVER THE BOUND" in result.stdout
    assert "OVER the bound 1" in result.stdout


def test_a_dsn_it_cannot_use_is_one_clear_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pooled_postgres.watch",
            "--role",
            "chat_app",
            "--database",
            "chat",
            "--postgres-dsn",
            "host=127.0.0.1 port=1 connect_timeout=2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot connect with --postgres-dsn 'host=127.0.0.1 port=1")
    assert result.stdout == ""
