"""python -m loadtest.bench: `make bench`, the configurations side by side on this machine.

For each configuration (native/profiles.py, plus variants that turn one lever),
the app is restarted with the same number of Daphne processes and driven by the
saturating WebSocket-only load (each user's next message right after its ack),
in rounds with the order reversed every other round so that a slow moment of the
machine does not land on one configuration only. The load runs in two scenarios
(bench_table.BENCH_SCENARIOS): websocket-only, each message one INSERT, and
realistic-database, where the app does what a real handler does before storing
a message (a read and a permission lookup, CHAT_MESSAGE_CHECKS). WebSocket-only load
does not show the leak (consumers use one database thread per process), so each
configuration from native/profiles.py also gets a short chat run with its HTTP
page and history loads, for its connection peaks. Then the ceiling:
pgbench running the same INSERT through the same PgBouncer. Then the capacity
run: the shipped configuration under the chat scenario with many users.

Each throughput run also counts the CPU each kind of process used per message
(loadtest/cpu.py), from the kernel's accounting.

Writes results/latest/bench.json (one object per configuration, with the
summary keys, plus the ceiling and the capacity run), bench.md and bench.png,
and prints the Markdown table. The app is left running in the shipped profile.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from loadtest import ceiling, cpu
from loadtest.bench_table import (
    BENCH_SCENARIOS,
    CONFIGS,
    WEBSOCKET_ONLY,
    BenchConfig,
    BenchScenario,
    combine,
    markdown,
    plot,
)
from loadtest.headroom import Headroom
from loadtest.runner import Target, run_target, wait_healthy
from loadtest.scenario import PROJECT, Scenario, raise_open_file_limit
from loadtest.workloads import prepare_rooms, throughput_scenario
from native.layout import Config, StackError
from native.profiles import SHIPPED
from native.stack import Stack
from probes.connections import app_pool, connection_bound, pool_server_connections


def leak_scenario() -> Scenario:
    """Chat users reloading history every few seconds: the HTTP traffic that leaks."""
    return Scenario(
        users=300,
        hold_s=20,
        spawn_rate=25,
        mode="chat",
        pace_s=5,
        history_every_s=5,
        room_size=5,
        room_prefix="leak",
        idle_after_s=5,
    )


def capacity_scenario(args) -> Scenario:
    # A long pace and rarer history reloads: many people in rooms, each one quiet,
    # which is what a large chat looks like; the HTTP page loads still come with every join.
    return Scenario(
        users=args.capacity_users,
        hold_s=60,
        # Each arrival is three HTTP requests and a handshake: an arrival rate two Daphne
        # processes absorb while serving thousands already connected (README, "Performance").
        spawn_rate=25,
        mode="chat",
        pace_s=25,
        history_every_s=120,
        room_size=5,
        room_prefix="capacity",
        idle_after_s=10,
    )


def start(
    stacks: dict[bool, Stack],
    config: BenchConfig,
    current: Stack | None,
    scenario: BenchScenario = WEBSOCKET_ONLY,
) -> Stack:
    """The app in a configuration, with a scenario's settings on top; switching TLS on or off
    restarts the data services too."""
    stack = stacks[config.tls]
    extra_env = {**config.extra_env, **scenario.app_env}
    if stack is not current:
        stack.up(config.profile, extra_env)
    stack.restart_app(config.profile, extra_env)
    wait_healthy(stack.app_url)
    return stack


def measure_connections(stack: Stack, samples: int = 50) -> dict:
    """Milliseconds for one new connection as the app role (SCRAM, and TLS when on), through
    PgBouncer and straight to PostgreSQL: p50 and p95 of ``samples`` connections each."""
    hops = {
        "pgbouncer": stack.dsn("chat_app", through_pgbouncer=True),
        # chat_app may not log in straight to PostgreSQL from here in Compose; natively it may
        # (pg_hba.conf: loopback), which is what the naive configuration does.
        "postgres": stack.dsn("chat_app", through_pgbouncer=False),
    }
    figures = {}
    for hop, dsn in hops.items():
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            psycopg.connect(dsn, autocommit=True).close()
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        figures[hop] = {"p50": statistics.median(times), "p95": times[int(0.95 * (samples - 1))]}
    return figures


def measure_ceiling(stack: Stack, args) -> dict:
    with psycopg.connect(stack.dsn("chat_owner", through_pgbouncer=False)) as owner:
        room_id = owner.execute("SELECT id FROM chat_room WHERE slug = 'bench-0-0'").fetchone()[0]
    by_clients = {}
    for clients in (1, 4, 10):
        print(f"  pgbench, {clients} client(s), {args.pgbench_seconds} s, through PgBouncer", flush=True)
        by_clients[str(clients)] = ceiling.run(
            host=stack.config.host,
            port=stack.config.pgbouncer_port,
            user="chat_app",
            password=stack.secret("POSTGRES_APP_PASSWORD"),
            ca_file=stack.ca_file if stack.config.tls else None,
            room_id=room_id,
            clients=clients,
            seconds=args.pgbench_seconds,
        )
    with psycopg.connect(
        stack.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"), autocommit=True
    ) as console:
        pool = app_pool(console)
    best = max(by_clients.values(), key=lambda run: run["tps"])
    return {
        "config": "pgbench ceiling",
        "description": "pgbench: the message INSERT as chat_app through the same PgBouncer, "
        "persistent connections, no app in between",
        "tps_by_clients": by_clients,
        "messages_per_s": round(best["tps"], 1),
        # Server connections PgBouncer keeps for the app role once pgbench is done.
        "server_connections_after": pool_server_connections(pool),
        "server_connection_bound": connection_bound(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users", type=int, default=200, help="saturating users per run (default %(default)s)"
    )
    parser.add_argument("--hold", type=float, default=20, help="seconds at full load per run (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration (default %(default)s)")
    parser.add_argument("--only", action="append", help="measure only this configuration (repeatable)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(BENCH_SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="(default %(default)s)")
    parser.add_argument(
        "--capacity-users", type=int, default=7500, help="0 skips the capacity run (%(default)s)"
    )
    parser.add_argument(
        "--results", type=Path, default=PROJECT / "results" / "latest", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS if not args.only or c.name in args.only]
    scenarios = [s for s in BENCH_SCENARIOS.values() if not args.scenario or s.name in args.scenario]

    raise_open_file_limit()
    # One stack, its data services with TLS or without (pooled-djangopool-notls).
    stacks = {tls: Stack(Config(tls=tls)) for tls in (True, False)}
    stack = stacks[True]
    scenario = throughput_scenario(args.users, args.hold)
    out = args.results / "bench"
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    try:
        stack.up(SHIPPED)
        prepare_rooms(stack, scenario)
        runs: dict[tuple[str, str], list[dict]] = {(s.name, c.name): [] for s in scenarios for c in configs}
        for round_number in range(args.rounds):
            order = configs if round_number % 2 == 0 else list(reversed(configs))
            for bench_scenario in scenarios:
                for config in order:
                    print(
                        f"[round {round_number + 1}/{args.rounds}, {bench_scenario.name}] "
                        f"{config.name}: {config.description}",
                        flush=True,
                    )
                    stack = start(stacks, config, stack, bench_scenario)
                    target = Target(config.name, stack.app_url, config.description)
                    before = cpu.snapshot(stack)
                    run_dir = out / bench_scenario.name / f"{config.name}-{round_number + 1}"
                    run = run_target(target, scenario, run_dir, stack.monitor_env())
                    sent = run["requests_by_name"].get("WS message", {}).get("requests", 0)
                    run["cpu_ms_per_message"] = cpu.per_message(before, cpu.snapshot(stack), sent)
                    runs[bench_scenario.name, config.name].append(run)
        leaks: dict[str, dict] = {}
        leak = leak_scenario()
        # The chat run with HTTP belongs to the WebSocket-only rows (their verdict covers both).
        with_http = [c for c in configs if not c.extra_env and c.tls] if WEBSOCKET_ONLY in scenarios else []
        for config in with_http:
            print(f"[with HTTP] {config.name}: {leak.describe()}", flush=True)
            stack = start(stacks, config, stack)
            target = Target(config.name, stack.app_url, config.description)
            leaks[config.name] = run_target(
                target, leak, out / f"{config.name}-with-http", stack.monitor_env()
            )
        rows = [
            combine(c, runs[s.name, c.name], leaks.get(c.name) if s is WEBSOCKET_ONLY else None, s)
            for s in scenarios
            for c in configs
        ]
        print("new connections, with TLS and without:", flush=True)
        connections = {"samples": 50}
        for tls in (False, True):
            stack = start(stacks, BenchConfig(SHIPPED.name, SHIPPED, tls=tls), stack)
            connections["tls" if tls else "plain"] = measure_connections(stack)
        env = stack.monitor_env()
        print("ceiling:", flush=True)
        ceiling_row = measure_ceiling(stack, args)
        capacity = None
        if args.capacity_users:
            cap = capacity_scenario(args)
            print(f"capacity: {cap.describe()}", flush=True)
            target = Target(
                "capacity", stack.app_url, f"shipped ({SHIPPED.name}), chat scenario", SHIPPED.name
            )
            headroom = Headroom(stack)
            headroom.start()
            try:
                capacity = run_target(target, cap, out / "capacity", env)
            finally:
                headroom.stop()
            capacity.update(headroom.figures(cap.ramp_s, capacity["users_peak"]))
    except (StackError, RuntimeError, psycopg.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if stack.pid("postgres"):
            start(stacks, BenchConfig(SHIPPED.name, SHIPPED), stack)

    header = (
        f"`make bench` on {machine}, {stack.config.app_workers} Daphne processes for every configuration, "
        f"{datetime.now(UTC):%Y-%m-%d}. Throughput: {scenario.describe()}; {args.rounds} runs each "
        "(mean msg/s; worst p99, peak and failures). With HTTP: "
        f"{leak_scenario().describe()}; verdict over both. Scenarios: "
        + "; ".join(f"{s.name}, {s.summary}" for s in scenarios)
        + "."
    )
    table = markdown(rows, ceiling_row, capacity, header, connections)
    result = [*rows, ceiling_row, {"config": "new connections (ms)", **connections}] + (
        [{**capacity, "config": f"capacity: {capacity['config']}"}] if capacity else []
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "bench.md").write_text(table)
    plot(rows, args.results / "bench.png")
    print("\n" + table)
    print(
        f"Written: {args.results / 'bench.json'}, {args.results / 'bench.md'}, {args.results / 'bench.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
