"""python -m loadtest.bench: `make bench`, the configurations side by side on this machine.

For each configuration (native/profiles.py, plus variants that turn one lever),
the app is restarted with the same number of Daphne processes and driven by the
saturating WebSocket-only scenario (each user's next message right after its
ack), in rounds with the order reversed every other round so that a slow moment
of the machine does not land on one configuration only. WebSocket-only load
does not show the leak (consumers use one database thread per process), so each
configuration from native/profiles.py also gets a short chat run with its HTTP
page and history loads, for its connection peaks. Then the ceiling:
pgbench running the same INSERT through the same PgBouncer. Then the capacity
run: the shipped configuration under the chat scenario with many users.

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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from loadtest import bench_plot, ceiling
from loadtest.client import ChatHttp
from loadtest.demo import monitor_env, restart_clean
from loadtest.gate import verdict
from loadtest.observe import app_pool, connection_bound, pool_server_connections
from loadtest.prove import Target, run_target, wait_healthy
from loadtest.report import traffic_split
from loadtest.scenario import PROJECT, Scenario, raise_open_file_limit
from native.profiles import PROFILES, SHIPPED, Profile
from native.stack import Stack, StackError


@dataclass(frozen=True)
class BenchConfig:
    name: str
    profile: Profile
    extra_env: dict[str, str] = field(default_factory=dict)  # one lever turned, on top of the profile
    note: str = ""

    @property
    def description(self) -> str:
        return self.note or self.profile.summary


CONFIGS = [
    BenchConfig(profile.name, profile)
    for profile in (
        PROFILES["naive"],
        PROFILES["direct-0"],
        PROFILES["pgbouncer-60"],
        PROFILES["pooled"],
        PROFILES["pooled-djangopool"],
    )
] + [
    # The levers measured to choose the shipped defaults (app/chat_site/settings.py).
    BenchConfig(
        "pooled-djangopool+core-layer",
        SHIPPED,
        {"CHANNEL_LAYER_BACKEND": "core"},
        "shipped, but channels_redis' list-based core layer instead of pub/sub",
    ),
    BenchConfig(
        "pooled-djangopool+query-check",
        SHIPPED,
        {"DATABASE_POOL_CHECK": "query"},
        "shipped, but Django's stock pool check: an empty query before every checkout",
    ),
    BenchConfig(
        "pooled-djangopool-nocheck",
        SHIPPED,
        {"DATABASE_CONN_HEALTH_CHECKS": "false"},
        "shipped, but no health check (a round trip) when the pool hands out a connection",
    ),
]


class BenchStack(Stack):
    """The native stack with one extra set of app variables for the configuration being measured."""

    extra_env: dict[str, str] = {}  # replaced per configuration, never mutated

    def app_env(self, profile: Profile) -> dict[str, str]:
        return {**super().app_env(profile), **self.extra_env}

    def start_config(self, config: BenchConfig) -> None:
        self.extra_env = dict(config.extra_env)
        restart_clean(self, config.profile)


def throughput_scenario(args) -> Scenario:
    return Scenario(
        users=args.users,
        hold_s=args.hold,
        spawn_rate=max(50.0, args.users / 2),
        mode="saturate",
        room_size=5,
        room_prefix="bench",
        idle_after_s=5,
        max_fail_ratio=0.0,
    )


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
        # Each arrival is three HTTP requests and a handshake: at 50/s, past ~3,000 users,
        # two Daphne processes fell 10 s behind during the ramp (and recovered once
        # everyone was in); 20/s is an arrival rate they absorb.
        spawn_rate=20,
        mode="chat",
        pace_s=25,
        history_every_s=120,
        room_size=5,
        room_prefix="capacity",
        idle_after_s=10,
    )


def prepare_rooms(stack: Stack, scenario: Scenario) -> None:
    """Create the saturating users' rooms up front, so the measured runs make no HTTP requests."""
    http = ChatHttp(stack.app_url)
    for number in range(-(-scenario.users // scenario.room_size)):
        http.ensure_room(f"{scenario.room_prefix}-0-{number}")


def combine(config: BenchConfig, runs: list[dict], with_http: dict | None) -> dict:
    """One row from several rounds: mean messages/s; the worst latency, peak and failures.

    The peak and verdict also count the chat run with HTTP (``with_http``) when there is one.
    """
    rates = [run["messages_per_s"] or 0.0 for run in runs]
    worst = max(runs, key=lambda run: (run["latency_ms"] or {}).get("p99", 0))
    websocket_peak = max(run["server_connections_peak"] or 0 for run in runs)
    peaks = [websocket_peak] + ([with_http["server_connections_peak"] or 0] if with_http else [])
    bound = runs[0]["server_connection_bound"]
    return {
        "config": config.name,
        "description": config.description,
        "users": runs[0]["users"],
        "duration_s": round(sum(run["duration_s"] for run in runs), 1),
        "requests": sum(run["requests"] for run in runs),
        "failures": sum(run["failures"] for run in runs),
        "server_connections_peak": max(peaks),
        "server_connection_bound": bound,
        "server_connections_after": max(run["server_connections_after"] or 0 for run in runs),
        "pgbouncer_clients_peak": max(run.get("pgbouncer_clients_peak") or 0 for run in runs),
        "latency_ms": worst["latency_ms"],
        "messages_per_s": round(statistics.mean(rates), 1),
        "messages_per_s_runs": rates,
        "verdict": verdict(max(peaks), bound),
        "server_connections_peak_websocket_only": websocket_peak,
        "with_http": _leak_figures(with_http) if with_http else None,
        "scenario": runs[0]["scenario"],
        "extra_env": config.extra_env,
    }


def _leak_figures(summary: dict) -> dict:
    http_requests, http_failures = traffic_split(summary)["HTTP"]
    return {
        "server_connections_peak": summary["server_connections_peak"],
        "server_connections_after": summary["server_connections_after"],
        "pgbouncer_clients_peak": summary["pgbouncer_clients_peak"],
        "http_requests": http_requests,
        "http_failures": http_failures,
        "requests": summary["requests"],
        "failures": summary["failures"],
        "scenario": summary["scenario"],
    }


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


def _count_of(http: dict) -> str:
    if not http:
        return "-"
    return f"{http['http_failures']:,} of {http['http_requests']:,}"


def markdown(rows: list[dict], ceiling_row: dict | None, capacity: dict | None, header: str) -> str:
    naive = next((row for row in rows if row["config"] == "naive"), None)
    lines = [
        header,
        "",
        "| config | msg/s | vs naive | p50 / p95 / p99 ms | failures "
        "| server conns peak: WS only / with HTTP | PgBouncer clients peak with HTTP "
        f"| HTTP failures | verdict (bound {rows[0]['server_connection_bound'] if rows else '-'}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        latency = row["latency_ms"] or {}
        ratio = (
            f"{row['messages_per_s'] / naive['messages_per_s']:.2f}x"
            if naive and naive["messages_per_s"]
            else "-"
        )
        shipped = " (shipped)" if row["config"] == SHIPPED.name else ""
        http = row["with_http"] or {}
        lines.append(
            f"| {row['config']}{shipped} "
            f"| {row['messages_per_s']:,.0f} | {ratio} | {latency.get('p50')} / {latency.get('p95')} / "
            f"{latency.get('p99')} | {row['failures']} "
            f"| {row['server_connections_peak_websocket_only']} / {http.get('server_connections_peak', '-')} "
            f"| {http.get('pgbouncer_clients_peak', '-')} | {_count_of(http)} | {row['verdict']} |"
        )
    if ceiling_row:
        tps = ", ".join(f"{c} client(s) {r['tps']:,.0f}" for c, r in ceiling_row["tps_by_clients"].items())
        lines += ["", f"Ceiling, pgbench through the same PgBouncer (transactions/s): {tps}."]
    if capacity:
        latency = capacity["latency_ms"] or {}
        lines += [
            "",
            f"Capacity, shipped configuration ({capacity['config']}), chat scenario: "
            f"{capacity['users_peak']:,} concurrent WebSocket users, "
            f"{capacity['messages_per_s']:,.0f} msg/s, "
            f"p50 / p95 / p99 {latency.get('p50')} / {latency.get('p95')} / {latency.get('p99')} ms, "
            f"{capacity['failures']:,} failures of {capacity['requests']:,} requests, "
            f"server connections peak {capacity['server_connections_peak']} / bound "
            f"{capacity['server_connection_bound']} ({capacity['verdict']}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users", type=int, default=200, help="saturating users per run (default %(default)s)"
    )
    parser.add_argument("--hold", type=float, default=20, help="seconds at full load per run (%(default)s)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per configuration (default %(default)s)")
    parser.add_argument("--only", action="append", help="measure only this configuration (repeatable)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="(default %(default)s)")
    parser.add_argument(
        "--capacity-users", type=int, default=5000, help="0 skips the capacity run (%(default)s)"
    )
    parser.add_argument(
        "--results", type=Path, default=PROJECT / "results" / "latest", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)
    configs = [c for c in CONFIGS if not args.only or c.name in args.only]

    raise_open_file_limit()
    stack = BenchStack()
    scenario = throughput_scenario(args)
    out = args.results / "bench"
    machine = f"{platform.platform()}, {os.cpu_count()} CPUs"
    try:
        stack.up(SHIPPED)
        env = monitor_env(stack)
        prepare_rooms(stack, scenario)
        runs: dict[str, list[dict]] = {c.name: [] for c in configs}
        for round_number in range(args.rounds):
            order = configs if round_number % 2 == 0 else list(reversed(configs))
            for config in order:
                print(
                    f"[round {round_number + 1}/{args.rounds}] {config.name}: {config.description}",
                    flush=True,
                )
                stack.start_config(config)
                wait_healthy(stack.app_url)
                target = Target(config.name, stack.app_url, config.description)
                runs[config.name].append(
                    run_target(target, scenario, out / f"{config.name}-{round_number + 1}", env)
                )
        leaks: dict[str, dict] = {}
        leak = leak_scenario()
        for config in (c for c in configs if not c.extra_env):
            print(f"[with HTTP] {config.name}: {leak.describe()}", flush=True)
            stack.start_config(config)
            wait_healthy(stack.app_url)
            target = Target(config.name, stack.app_url, config.description)
            leaks[config.name] = run_target(target, leak, out / f"{config.name}-with-http", env)
        rows = [combine(c, runs[c.name], leaks.get(c.name)) for c in configs]
        stack.start_config(BenchConfig(SHIPPED.name, SHIPPED))
        print("ceiling:", flush=True)
        ceiling_row = measure_ceiling(stack, args)
        capacity = None
        if args.capacity_users:
            cap = capacity_scenario(args)
            print(f"capacity: {cap.describe()}", flush=True)
            target = Target(
                "capacity", stack.app_url, f"shipped ({SHIPPED.name}), chat scenario", SHIPPED.name
            )
            capacity = run_target(target, cap, out / "capacity", env)
    except (StackError, RuntimeError, psycopg.Error) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if stack.pid("postgres"):
            stack.start_config(BenchConfig(SHIPPED.name, SHIPPED))

    header = (
        f"`make bench` on {machine}, {stack.config.app_workers} Daphne processes for every configuration, "
        f"{datetime.now(UTC):%Y-%m-%d}. Throughput: {scenario.describe()}; {args.rounds} runs each "
        "(mean msg/s; worst p99, peak and failures). With HTTP: "
        f"{leak_scenario().describe()}; verdict over both."
    )
    table = markdown(rows, ceiling_row, capacity, header)
    result = [*rows, ceiling_row] + (
        [{**capacity, "config": f"capacity: {capacity['config']}"}] if capacity else []
    )
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / "bench.md").write_text(table)
    bench_plot.plot(rows, args.results / "bench.png")
    print("\n" + table)
    print(
        f"Written: {args.results / 'bench.json'}, {args.results / 'bench.md'}, {args.results / 'bench.png'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
