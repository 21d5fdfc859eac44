"""`make bench`'s configurations, and its results as a table (bench.md) and a plot (bench.png).

The library behind `python -m loadtest.bench` (which measures) and
`python -m loadtest.bench_plot` (which redraws the plot from bench.json).
"""

import os
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


@dataclass(frozen=True)
class BenchScenario:
    """How much database work each message of the saturating WebSocket load does: the app's
    settings for it, on top of each configuration's."""

    name: str
    app_env: dict[str, str]
    summary: str


WEBSOCKET_ONLY = BenchScenario("websocket-only", {}, "each message one INSERT (the app as shipped)")
# What a real handler does before it stores a message (README, "Performance"): where the
# database, and how many calls run at once per process, starts to matter.
REALISTIC_DATABASE = BenchScenario(
    "realistic-database",
    {"CHAT_MESSAGE_CHECKS": "true"},
    "each message a read (its client_id stored already?) and a permission lookup (the author "
    "banned from the room?) before the INSERT, in one transaction (CHAT_MESSAGE_CHECKS)",
)
BENCH_SCENARIOS = {scenario.name: scenario for scenario in (WEBSOCKET_ONLY, REALISTIC_DATABASE)}


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
    BenchConfig(
        "pooled-djangopool-nobatch",
        SHIPPED,
        {"CHAT_POST_BATCH_MAX": "1"},
        "shipped, but each post stored by a database call of its own instead of in batches",
    ),
    BenchConfig(
        "pooled-djangopool+db-threads",
        SHIPPED,
        {"CHAT_DATABASE_THREADS": "4"},
        "shipped, but the consumer's database calls on 4 threads per process (as many as the pool's "
        "connections) instead of Channels' one",
    ),
]


def combine(
    config: BenchConfig, runs: list[dict], with_http: dict | None, scenario: BenchScenario = WEBSOCKET_ONLY
) -> dict:
    """One row from several rounds of one scenario: mean messages/s; the worst latency, peak
    and failures.

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
        "bench_scenario": scenario.name,
        "extra_env": config.extra_env,
    }


def scenario_rows(rows: list[dict], scenario: BenchScenario) -> list[dict]:
    """The rows of one scenario (a bench.json from before there were two has only WebSocket-only rows)."""
    return [row for row in rows if row.get("bench_scenario", WEBSOCKET_ONLY.name) == scenario.name]


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
    """The WebSocket-only scenario's table (with the HTTP runs) and, when it was run, the
    realistic-database scenario's; each with its CPU per message. Then the rest."""
    websocket_only = scenario_rows(rows, WEBSOCKET_ONLY)
    realistic = scenario_rows(rows, REALISTIC_DATABASE)
    lines = [header]
    if websocket_only:
        lines += websocket_only_table(websocket_only)
        lines += cpu_table(websocket_only)
    if realistic:
        lines += realistic_database_table(realistic, websocket_only)
        lines += cpu_table(realistic, f"In the {REALISTIC_DATABASE.name} scenario, ")
    if connections:
        lines += ["", connection_cost(connections, websocket_only)]
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
        if cores := capacity.get("cores_busy_at_full_load"):
            busy = ", ".join(f"{kind} {value:.2f}" for kind, value in cores.items())
            lines[-1] += (
                f" At full load, cores busy (of {os.cpu_count()}): {busy}. Daphne's memory: "
                f"{capacity['daphne_mib_peak']:,} MiB at its largest, "
                f"{capacity['daphne_kib_per_socket']:,.0f} KiB per socket."
            )
    return "\n".join(lines) + "\n"


def websocket_only_table(rows: list[dict]) -> list[str]:
    naive = _named(rows, "naive")
    lines = [
        "",
        "| config | msg/s | vs naive | p50 / p95 / p99 ms | failures "
        "| server conns peak: WS only / with HTTP | PgBouncer clients peak with HTTP "
        f"| HTTP failures | verdict (bound {rows[0]['server_connection_bound']}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        http = row["with_http"] or {}
        lines.append(
            f"| {_config_cell(row)} | {row['messages_per_s']:,.0f} | {_ratio(row, naive)} | {_latency(row)} "
            f"| {row['failures']} "
            f"| {row['server_connections_peak_websocket_only']} / {http.get('server_connections_peak', '-')} "
            f"| {http.get('pgbouncer_clients_peak', '-')} | {_count_of(http)} | {row['verdict']} |"
        )
    return lines


def realistic_database_table(rows: list[dict], websocket_only: list[dict]) -> list[str]:
    """The same load with more database work per message: against naive under the same work,
    and against the configuration's own WebSocket-only figure (what the work costs it)."""
    naive = _named(rows, "naive")
    lines = [
        "",
        f"Realistic-database scenario, the same load with {REALISTIC_DATABASE.summary}:",
        "",
        "| config | msg/s | vs naive | vs its WebSocket-only | p50 / p95 / p99 ms | failures "
        "| server conns peak | PgBouncer clients peak "
        f"| verdict (bound {rows[0]['server_connection_bound']}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        alone = _named(websocket_only, row["config"])
        lines.append(
            f"| {_config_cell(row)} | {row['messages_per_s']:,.0f} | {_ratio(row, naive)} "
            f"| {_ratio(row, alone)} | {_latency(row)} | {row['failures']} "
            f"| {row['server_connections_peak']} | {row['pgbouncer_clients_peak']} | {row['verdict']} |"
        )
    return lines


def _named(rows: list[dict], config: str) -> dict | None:
    return next((row for row in rows if row["config"] == config), None)


def _config_cell(row: dict) -> str:
    return row["config"] + (" (shipped)" if row["config"] == SHIPPED.name else "")


def _ratio(row: dict, reference: dict | None) -> str:
    if not reference or not reference["messages_per_s"]:
        return "-"
    return f"{row['messages_per_s'] / reference['messages_per_s']:.2f}x"


def _latency(row: dict) -> str:
    latency = row["latency_ms"] or {}
    return f"{latency.get('p50')} / {latency.get('p95')} / {latency.get('p99')}"


def cpu_table(rows: list[dict], title: str = "") -> list[str]:
    """Where the cores went: CPU milliseconds per message by kind of process, over whole runs
    (ramp, connects and idle tail included), for the configurations that were measured."""
    measured = [row for row in rows if row.get("cpu_ms_per_message")]
    if not measured:
        return []
    kinds = list(measured[0]["cpu_ms_per_message"])
    lines = [
        "",
        f"{title}CPU per message, milliseconds, by kind of process (the kernel's accounting over each "
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
    """Two panels that share the configurations: messages per second in each scenario
    (each round a dot, the mean a bar), and the PostgreSQL server connections each
    configuration peaked at against PgBouncer's bound."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(row["config"] for row in rows))
    measured = {
        scenario.name: {row["config"]: row for row in scenario_rows(rows, scenario)}
        for scenario in BENCH_SCENARIOS.values()
    }
    scenarios = [name for name, by_config in measured.items() if by_config]
    positions = range(len(names))
    colors = ["tab:green" if name == SHIPPED.name else "tab:grey" for name in names]
    figure, (speed, connections) = plt.subplots(
        1,
        2,
        figsize=(12, 0.55 * len(names) * len(scenarios) + 2),
        sharey=True,
        gridspec_kw={"width_ratios": (3, 2)},
    )

    for offset, scenario in _offsets(scenarios):
        height, by_config = 0.8 / len(scenarios), measured[scenario]
        hatch = "//" if scenario != WEBSOCKET_ONLY.name else None
        speed.barh(
            [p + offset for p in positions],
            [by_config[name]["messages_per_s"] if name in by_config else 0 for name in names],
            height=height,
            color=colors,
            alpha=0.7,
            hatch=hatch,
            label=scenario,
        )
        for position, name in zip(positions, names, strict=True):
            runs = by_config[name]["messages_per_s_runs"] if name in by_config else []
            speed.plot(runs, [position + offset] * len(runs), "o", color="black", markersize=3)
    speed.set_xlabel(f"messages/s, {' and '.join(scenarios)} (bar: mean; dots: each round)")
    speed.set_yticks(list(positions), [f"{n} (shipped)" if n == SHIPPED.name else n for n in names])
    speed.invert_yaxis()
    speed.grid(axis="x", alpha=0.3)
    if len(scenarios) > 1:
        speed.legend(loc="lower right", fontsize=8)

    peaks = {}  # label -> (color, the peak of each configuration, None where not run)
    websocket_only = measured[WEBSOCKET_ONLY.name]
    if websocket_only:
        peaks["WebSocket only"] = (
            "tab:blue",
            [_get(websocket_only, name, "server_connections_peak_websocket_only") for name in names],
        )
        with_http = [(websocket_only.get(name, {}).get("with_http") or {}) for name in names]
        peaks["chat with HTTP"] = ("tab:red", [http.get("server_connections_peak") for http in with_http])
    if realistic := measured[REALISTIC_DATABASE.name]:
        peaks[REALISTIC_DATABASE.name] = (
            "tab:purple",
            [_get(realistic, name, "server_connections_peak") for name in names],
        )
    for offset, label in _offsets(list(peaks)):
        color, values = peaks[label]
        bars = [p + offset for p in positions]
        height = 0.8 / len(peaks)
        connections.barh(bars, [value or 0 for value in values], height=height, color=color, label=label)
        for bar, value in zip(bars, values, strict=True):
            if value is None:
                connections.text(0.5, bar, "not run", va="center", fontsize=7, color="grey")
    bound = rows[0]["server_connection_bound"]
    connections.axvline(bound, color="black", ls="-.", lw=1, label=f"PgBouncer's bound ({bound})")
    connections.set_xlabel("PostgreSQL server connections, peak (app role)")
    connections.legend(loc="lower right", fontsize=8)
    connections.grid(axis="x", alpha=0.3)

    figure.suptitle("make bench: throughput, and the server connections it took")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _offsets(series: list[str]) -> list[tuple[float, str]]:
    """Each series' offset from its configuration's row, so that their bars sit side by side."""
    height = 0.8 / len(series)
    return [(height * (index - (len(series) - 1) / 2), name) for index, name in enumerate(series)]


def _get(by_config: dict[str, dict], name: str, key: str):
    return by_config[name][key] if name in by_config else None
