"""The load test's parts against the real test stack: the monitor, the gate, the Locust user.

Locust runs as `make demo` and prove run it (a subprocess, headless, small and
short), so these tests exercise the same path; what they check is counts and
verdicts, never how fast anything was.
"""

import csv
import json
import subprocess
import sys
import uuid

import pytest

from loadtest import bench, cpu
from loadtest.bench_table import REALISTIC_DATABASE, WEBSOCKET_ONLY, BenchConfig, combine, markdown
from loadtest.monitor import POOL_FIELDS, ConnectionMonitor, MonitorDsns, SampleLog, read_samples
from loadtest.runner import Target, refuse_leftover_connections, run_target
from loadtest.scenario import PROJECT, Scenario, locust_options
from loadtest.verdicts import reasons_to_fail
from native.profiles import PROFILES, SHIPPED
from pooled_postgres.observe import bound_from_console
from probes.chat import ChatHttp, ChatSocket
from probes.connections import (
    APP_ROLE,
    app_role_backend_pids,
    connection_bound,
)


@pytest.fixture
def monitor(stack):
    monitor = ConnectionMonitor(MonitorDsns.from_env(stack.monitor_env()))
    monitor.open()
    yield monitor
    monitor.close()


def small(**changes) -> Scenario:
    """A few users for a few seconds, in rooms of their own."""
    settings = {
        "users": 10,
        "hold_s": 6,
        "spawn_rate": 10,
        "pace_s": 0.5,
        "history_every_s": 2,
        "room_prefix": f"lt-{uuid.uuid4().hex[:8]}",
        "idle_after_s": 1,
    }
    return Scenario(**{**settings, **changes})


# --- the monitor ------------------------------------------------------------------------


def test_the_monitor_samples_what_postgresql_and_pgbouncer_hold(stack, room, monitor, monitor_db):
    socket = ChatSocket(stack.app_url, room, "sampled")
    assert socket.post("so the app holds pooled connections", "m-1")["type"] == "ack"
    socket.close()

    sample = monitor.sample()
    by_state = sample["server_connections"][APP_ROLE]
    assert sample["app_server_connections"] == sum(by_state.values())
    assert sample["app_server_connections"] == len(app_role_backend_pids(monitor_db))
    assert 1 <= sample["app_server_connections"] <= connection_bound()
    pool = sample["pgbouncer_pool"]
    assert set(pool) == set(POOL_FIELDS)
    assert pool["cl_active"] >= 1  # the Django pool's logged-in client connections
    assert pool["sv_active"] + pool["sv_idle"] + pool["sv_used"] == sample["app_server_connections"]
    assert sample["app_direct"] == 0  # every one of them is PgBouncer's


def test_the_bound_is_the_same_read_from_the_ini_or_from_the_running_pgbouncer(monitor, pgbouncer_console):
    bound, source = monitor.bound()
    assert bound == connection_bound() == bound_from_console(pgbouncer_console)
    assert source.endswith("pgbouncer.ini")


def test_samples_are_kept_as_json_lines_and_csv(tmp_path, monitor):
    log = SampleLog(tmp_path)
    for second in range(3):
        log.write({"elapsed_s": second, "phase": "load", "users": 1, **monitor.sample()})
    log.close()
    samples = read_samples(tmp_path / "samples.jsonl")
    assert [s["elapsed_s"] for s in samples] == [0, 1, 2]
    with (tmp_path / "samples.csv").open() as csv_file:
        rows = list(csv.DictReader(csv_file))
    assert [row["app_server_connections"] for row in rows] == [
        str(s["app_server_connections"]) for s in samples
    ]
    assert [row["pgbouncer_cl_active"] for row in rows] == [
        str(s["pgbouncer_pool"]["cl_active"]) for s in samples
    ]


# --- the gate ---------------------------------------------------------------------------


def command(module: str, *args) -> subprocess.CompletedProcess:
    """One of the load test's commands, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def gate(summary_path) -> subprocess.CompletedProcess:
    return command("loadtest.gate", summary_path)


def test_the_gate_fails_a_run_whose_samples_exceed_the_bound(tmp_path):
    bound = connection_bound()
    log = SampleLog(tmp_path)
    for connections in (2, bound + 1, 3):
        log.write({"elapsed_s": connections, "app_server_connections": connections})
    log.close()
    # The summary claims a peak within the bound; the gate believes the samples.
    summary = {"config": "over", "requests": 10, "failures": 0, "server_connections_peak": 3}
    (tmp_path / "summary.json").write_text(json.dumps(summary))

    result = gate(tmp_path / "summary.json")
    assert result.returncode == 1
    assert f"{bound + 1} exceed the bound {bound}" in result.stdout
    assert "unbounded" in result.stdout


def test_the_gate_passes_a_run_within_the_bound_and_fails_one_with_failures(tmp_path):
    bound = connection_bound()
    log = SampleLog(tmp_path)
    log.write({"elapsed_s": 0, "app_server_connections": bound})
    log.close()
    (tmp_path / "summary.json").write_text(json.dumps({"requests": 10, "failures": 0}))
    assert gate(tmp_path / "summary.json").returncode == 0

    within = {"server_connections_peak": bound, "server_connection_bound": bound}
    assert reasons_to_fail({**within, "requests": 100, "failures": 1}, max_fail_ratio=0.0) != []
    assert reasons_to_fail({**within, "requests": 100, "failures": 1}, max_fail_ratio=0.05) == []
    assert reasons_to_fail({**within, "requests": 0, "failures": 0}, max_fail_ratio=0.0) != []
    no_reading = {
        "server_connections_peak": None,
        "server_connection_bound": bound,
        "requests": 1,
        "failures": 0,
    }
    assert reasons_to_fail(no_reading, max_fail_ratio=0.0) != []


# --- the Locust user against the real stack --------------------------------------------


def test_locust_chat_users_get_every_message_acknowledged(stack, tmp_path):
    summary = run_target(
        Target("pooled", stack.app_url, config=SHIPPED.name), small(), tmp_path, stack.monitor_env()
    )
    by_name = summary["requests_by_name"]
    messages = by_name["WS message"]["requests"]
    assert summary["requests"] > 0
    assert summary["failures"] == 0
    assert messages > 0
    assert by_name["WS connect"]["requests"] >= 10
    for page in ("GET /", "POST /api/rooms", "GET /api/rooms/[room]/messages"):
        assert by_name[page]["requests"] >= 10
    counters = summary["chat_counters"]
    assert counters["acks_matched"] == messages  # every ack answered the message it names
    assert counters.get("acks_unmatched", 0) == 0
    assert counters["broadcasts_received"] >= messages  # each reaches its sender at least
    assert summary["verdict"] == "bounded"
    assert summary["gate"]["passed"]
    assert summary["config"] == SHIPPED.name
    assert summary["latency_ms"]["p99"] > 0
    assert len(read_samples(tmp_path / "samples.jsonl")) >= 5


def test_locust_saturating_users_send_without_pause(stack, tmp_path):
    # Capped under the server's per-socket rate limit (CHAT_RATE_PER_S, 20/s): five
    # users back to back would measure the limiter, not the user.
    scenario = small(mode="saturate", users=5, spawn_rate=5, hold_s=3, max_rate=10)
    http = ChatHttp(stack.app_url)
    http.ensure_room(f"{scenario.room_prefix}-0-0")  # WebSocket-only users make no HTTP requests
    before = cpu.snapshot(stack)
    summary = run_target(Target("saturate", stack.app_url), scenario, tmp_path, stack.monitor_env())
    after = cpu.snapshot(stack)
    assert summary["failures"] == 0
    assert set(summary["requests_by_name"]) == {"WS connect", "WS message"}
    sent = summary["requests_by_name"]["WS message"]["requests"]
    assert sent > summary["users"]
    assert summary["messages_per_s"] > 0

    # Where the CPU went: every message cost Daphne, PostgreSQL, PgBouncer, Redis (the
    # broadcast) and Locust something, and nothing a negative amount.
    summary["cpu_ms_per_message"] = cpu.per_message(before, after, sent)
    assert set(summary["cpu_ms_per_message"]) == set(cpu.KINDS)
    assert all(ms > 0 for ms in summary["cpu_ms_per_message"].values()), summary["cpu_ms_per_message"]

    # What `make bench` makes of such runs: a row of its table, and its plot.
    row = combine(BenchConfig(SHIPPED.name, SHIPPED), [summary, summary], with_http=None)
    assert row["messages_per_s"] == summary["messages_per_s"]
    assert row["requests"] == 2 * summary["requests"]
    assert row["verdict"] == "bounded"
    assert row["cpu_ms_per_message"] == summary["cpu_ms_per_message"]
    table = markdown([row], None, None, "header")
    assert f"| {SHIPPED.name} (shipped) | {summary['messages_per_s']:,.0f} |" in table
    daphne_ms = row["cpu_ms_per_message"]["Daphne"]
    assert f"| config | {' | '.join(cpu.KINDS)} | all |" in table
    assert f"| {SHIPPED.name} | {daphne_ms:.2f} |" in table
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps([row]))
    assert command("loadtest.bench_plot", bench_json).returncode == 0
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_the_realistic_database_scenario_runs_the_same_load_with_the_checks_on(stack, tmp_path):
    """`make bench`'s second scenario: the app restarted by the bench with its settings on top
    of the configuration's; the saturating users meet no failure; the table gets a second part."""
    scenario = small(mode="saturate", users=5, spawn_rate=5, hold_s=3, max_rate=10)
    ChatHttp(stack.app_url).ensure_room(f"{scenario.room_prefix}-0-0")
    config = BenchConfig("pooled-djangopool+db-threads", SHIPPED, {"CHAT_DATABASE_THREADS": "4"})
    summaries = {}
    try:
        for bench_scenario in (WEBSOCKET_ONLY, REALISTIC_DATABASE):
            assert bench.start({True: stack}, config, stack, bench_scenario) is stack
            assert stack.running_app() == (SHIPPED, {**config.extra_env, **bench_scenario.app_env})
            target = Target(config.name, stack.app_url)
            before = cpu.snapshot(stack)
            summary = run_target(target, scenario, tmp_path / bench_scenario.name, stack.monitor_env())
            sent = summary["requests_by_name"]["WS message"]["requests"]
            summary["cpu_ms_per_message"] = cpu.per_message(before, cpu.snapshot(stack), sent)
            summaries[bench_scenario.name] = summary
    finally:
        stack.restart_app(SHIPPED)
    for summary in summaries.values():
        assert summary["failures"] == 0, summary["errors"]
        assert summary["requests_by_name"]["WS message"]["requests"] > summary["users"]

    rows = [combine(config, [summaries[s.name]], None, s) for s in (WEBSOCKET_ONLY, REALISTIC_DATABASE)]
    assert [row["bench_scenario"] for row in rows] == ["websocket-only", "realistic-database"]
    table = markdown(rows, None, None, "header")
    realistic = rows[1]
    ratio = realistic["messages_per_s"] / rows[0]["messages_per_s"]
    assert "Realistic-database scenario, the same load with each message a read" in table
    assert f"| {config.name} | {realistic['messages_per_s']:,.0f} | - | {ratio:.2f}x |" in table
    assert "In the realistic-database scenario, CPU per message" in table
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps(rows))
    assert command("loadtest.bench_plot", bench_json).returncode == 0
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_saturating_users_in_rooms_nobody_prepared_create_them_without_a_failure(stack, tmp_path):
    """On a fresh stack the rooms do not exist yet: the users' own set-up is no failure."""
    scenario = small(mode="saturate", users=10, spawn_rate=10, hold_s=2, max_rate=5, room_size=5)
    summary = run_target(Target("fresh", stack.app_url), scenario, tmp_path, stack.monitor_env())
    assert summary["failures"] == 0, summary["errors"]
    by_name = summary["requests_by_name"]
    assert 1 <= by_name["POST /api/rooms"]["requests"] <= 10  # once per user at most, never per message
    assert by_name["WS connect"]["requests"] == 10
    assert by_name["WS message"]["requests"] > 0


def test_the_readme_lists_every_load_test_option_with_its_default():
    """`locust --help` cannot show the chat options (Locust prints it before it reads the
    locustfile that adds them), so the README's table is where they are documented."""
    readme = (PROJECT / "README.md").read_text()
    table = {
        cells[0].strip("` "): cells[1].strip("` ")
        for line in readme.splitlines()
        if line.startswith("| `--") and (cells := [c.strip() for c in line.strip("|").split("|")])
    }
    options = {item.metadata["flag"]: item.default for item in locust_options()}
    assert set(table) == set(options)
    for flag, default in options.items():
        assert table[flag] == (f"{default:g}" if isinstance(default, float) else str(default)), flag


def test_the_bench_plot_names_the_fix_when_there_is_no_bench_yet(tmp_path):
    result = command("loadtest.bench_plot", tmp_path / "bench.json")
    assert result.returncode == 2
    assert "run `make bench` first" in result.stderr
    assert not (tmp_path / "bench.png").exists()


def test_a_naive_run_leaks_server_connections_through_http_and_fails_the_gate(stack, tmp_path):
    """Straight to PostgreSQL with CONN_MAX_AGE=60, each HTTP request's thread keeps its
    connection: the same small chat load that stays bounded above goes over the bound."""
    stack.restart_app(PROFILES["naive"])
    try:
        summary = run_target(
            Target("naive", stack.app_url, config="naive"),
            small(users=30, spawn_rate=30, history_every_s=1),
            tmp_path,
            stack.monitor_env(),
        )
        # What it leaked stays, and would count against the next run: the proof refuses to start one.
        with pytest.raises(RuntimeError, match=r"not PgBouncer's.*restart the app"):
            refuse_leftover_connections(Target("next", stack.app_url), stack.monitor_env())
    finally:
        stack.restart_app(SHIPPED)
    refuse_leftover_connections(Target("next", stack.app_url), stack.monitor_env())  # gone with the app
    assert summary["server_connections_peak"] > summary["server_connection_bound"]
    assert summary["server_connections_direct_peak"] > summary["server_connection_bound"]  # the app's own
    assert summary["verdict"] == "unbounded"
    assert not summary["gate"]["passed"]
    assert any("exceed the bound" in reason for reason in summary["gate"]["reasons"])
    assert summary["requests_by_name"]["WS message"]["failures"] == 0  # the WebSockets are not the leak
