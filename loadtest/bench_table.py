"""`make bench`'s configurations, and its results as a table (bench.md) and a plot (bench.png).

The library behind `python -m loadtest.bench` (which measures) and
`python -m loadtest.bench_plot` (which redraws the plot from bench.json).
"""

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.report import traffic_split
from loadtest.verdicts import verdict
from native.profiles import PROFILES, SHIPPED, Profile


@dataclass(frozen=True)
class BenchConfig:
    name: str
    profile: Profile
    extra_env: dict[str, str] = field(default_factory=dict)  # one lever turned, on top of the profile
    note: str = ""
    tls: bool = True  # TLS on every hop between the app, PgBouncer, PostgreSQL and Redis

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
        "pooled-djangopool-notls",
        SHIPPED,
        note="shipped, but no TLS on any hop (app, PgBouncer, PostgreSQL, Redis): what TLS costs",
        tls=False,
    ),
    BenchConfig(
        "pooled-djangopool-nocheck",
        SHIPPED,
        {"DATABASE_CONN_HEALTH_CHECKS": "false"},
        "shipped, but no health check (a round trip) when the pool hands out a connection",
    ),
]


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
        "cpu_ms_per_message": _mean_by_kind([run.get("cpu_ms_per_message") for run in runs]),
        "verdict": verdict(max(peaks), bound),
        "server_connections_peak_websocket_only": websocket_peak,
        "with_http": _leak_figures(with_http) if with_http else None,
        "scenario": runs[0]["scenario"],
        "extra_env": config.extra_env,
    }


def _mean_by_kind(runs: list[dict | None]) -> dict | None:
    measured = [run for run in runs if run]
    if not measured:
        return None
    return {kind: round(statistics.mean(run[kind] for run in measured), 3) for kind in measured[0]}


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


def _count_of(http: dict) -> str:
    if not http:
        return "-"
    return f"{http['http_failures']:,} of {http['http_requests']:,}"


def markdown(
    rows: list[dict],
    ceiling_row: dict | None,
    capacity: dict | None,
    header: str,
    connections: dict | None = None,
) -> str:
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
    lines += cpu_table(rows)
    if connections:
        lines += ["", connection_cost(connections, rows)]
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


def cpu_table(rows: list[dict]) -> list[str]:
    """Where the cores went: CPU milliseconds per message by kind of process, over whole runs
    (ramp, connects and idle tail included), for the configurations that were measured."""
    measured = [row for row in rows if row.get("cpu_ms_per_message")]
    if not measured:
        return []
    kinds = list(measured[0]["cpu_ms_per_message"])
    lines = [
        "",
        "CPU per message, milliseconds, by kind of process (the kernel's accounting over each "
        "throughput run, connects included; mean of the runs):",
        "",
        f"| config | {' | '.join(kinds)} | all |",
        "|---|" + "---:|" * (len(kinds) + 1),
    ]
    for row in measured:
        figures = row["cpu_ms_per_message"]
        cells = " | ".join(f"{figures[kind]:.2f}" for kind in kinds)
        lines.append(f"| {row['config']} | {cells} | {sum(figures.values()):.2f} |")
    return lines


def connection_cost(connections: dict, rows: list[dict]) -> str:
    """One new connection, with TLS and without, and how rarely the shipped pool makes one."""

    def ms(tls: bool, hop: str) -> str:
        figures = connections["tls" if tls else "plain"][hop]
        return f"{figures['p50']:.1f} ms (p95 {figures['p95']:.1f})"

    line = (
        f"One new connection (SCRAM + TLS): through PgBouncer {ms(True, 'pgbouncer')}, "
        f"{ms(False, 'pgbouncer')} without TLS; straight to PostgreSQL {ms(True, 'postgres')}, "
        f"{ms(False, 'postgres')} without TLS ({connections['samples']} connections each)."
    )
    shipped = next((row for row in rows if row["config"] == SHIPPED.name), None)
    if shipped and shipped.get("pgbouncer_clients_peak"):
        per_run = shipped["requests"] / len(shipped["messages_per_s_runs"])
        clients = shipped["pgbouncer_clients_peak"]
        line += (
            f" The shipped configuration's pools opened at most {clients} connections to PgBouncer per "
            f"run (so at most {clients} handshakes) for ~{per_run:,.0f} WebSocket requests: "
            f"one per ~{per_run / clients:,.0f}."
        )
    return line


def configuration_rows(result: list[dict]) -> list[dict]:
    """The per-configuration rows of bench.json (not the ceiling and capacity rows)."""
    return [row for row in result if "messages_per_s_runs" in row]


def plot(rows: list[dict], path: Path) -> None:
    """Two panels that share the configurations: messages per second (each round a dot,
    the mean a bar), and the PostgreSQL server connections each configuration peaked
    at against PgBouncer's bound."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [row["config"] for row in rows]
    positions = range(len(rows))
    colors = ["tab:green" if name == SHIPPED.name else "tab:grey" for name in names]
    figure, (speed, connections) = plt.subplots(
        1, 2, figsize=(12, 0.55 * len(rows) + 2), sharey=True, gridspec_kw={"width_ratios": (3, 2)}
    )

    speed.barh(positions, [row["messages_per_s"] for row in rows], color=colors, alpha=0.7)
    for position, row in zip(positions, rows, strict=True):
        runs = row["messages_per_s_runs"]
        speed.plot(runs, [position] * len(runs), "o", color="black", markersize=3)
    speed.set_xlabel("messages/s, WebSocket only (bar: mean; dots: each round)")
    speed.set_yticks(list(positions), [f"{n} (shipped)" if n == SHIPPED.name else n for n in names])
    speed.invert_yaxis()
    speed.grid(axis="x", alpha=0.3)

    bound = rows[0]["server_connection_bound"]
    websocket_only = [row["server_connections_peak_websocket_only"] for row in rows]
    with_http = [(row["with_http"] or {}).get("server_connections_peak") for row in rows]
    connections.barh(
        [p - 0.2 for p in positions], websocket_only, height=0.4, color="tab:blue", label="WebSocket only"
    )
    connections.barh(
        [p + 0.2 for p in positions],
        [peak or 0 for peak in with_http],
        height=0.4,
        color="tab:red",
        label="chat with HTTP",
    )
    for position, peak in zip(positions, with_http, strict=True):
        if peak is None:
            connections.text(0.5, position + 0.2, "not run", va="center", fontsize=7, color="grey")
    connections.axvline(bound, color="black", ls="-.", lw=1, label=f"PgBouncer's bound ({bound})")
    connections.set_xlabel("PostgreSQL server connections, peak (app role)")
    connections.legend(loc="lower right", fontsize=8)
    connections.grid(axis="x", alpha=0.3)

    figure.suptitle("make bench: throughput, and the server connections it took")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
