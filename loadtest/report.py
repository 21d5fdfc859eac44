"""The proof's report: a one-screen verdict, report.md, and one plot (connections.png).

Everything here is read from the runs' summary.json and samples.jsonl, so the
report can be rebuilt from a results folder without running anything.
"""

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from pooled_postgres.watch import draw_connections, read_samples

PLOT_NAME = "connections.png"


def traffic_split(summary: dict) -> dict[str, tuple[int, int]]:
    """(requests, failures) for HTTP and for WebSocket, from Locust's per-request figures."""
    split = {"HTTP": [0, 0], "WebSocket": [0, 0]}
    for key, figures in summary.get("requests_by_name", {}).items():
        kind = "WebSocket" if key.startswith("WS ") else "HTTP"
        split[kind][0] += figures["requests"]
        split[kind][1] += figures["failures"]
    return {kind: (requests, failures) for kind, (requests, failures) in split.items()}


def _latency(summary: dict) -> str:
    latency = summary.get("latency_ms") or {}
    return " / ".join(str(latency.get(p, "-")) for p in ("p50", "p95", "p99"))


def _label(summary: dict, name: str) -> str:
    return name if summary["config"] == name else f"{name} ({summary['config']})"


def _rows(summaries: list[dict], names: list[str]) -> list[list[str]]:
    return [
        [
            _label(s, name),
            s["verdict"].upper(),
            f"{_n(s['server_connections_peak'])} / {s['server_connection_bound']}",
            _n(s["server_connections_after"]),
            _n(s.get("pgbouncer_clients_peak")),
            f"{s['requests']:,}",
            f"{s['failures']:,}",
            _n(s["messages_per_s"]),
            _latency(s),
        ]
        for name, s in zip(names, summaries, strict=True)
    ]


HEADERS = [
    "config",
    "verdict",
    "server conns peak / bound",
    "after idle",
    "PgBouncer clients peak",
    "requests",
    "failures",
    "msg/s",
    "message p50 / p95 / p99 ms",
]


def _n(value) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def _leak_lines(summaries: list[dict], names: list[str]) -> list[str]:
    lines = []
    for name, s in zip(names, summaries, strict=True):
        split = traffic_split(s)
        http, ws = split["HTTP"], split["WebSocket"]
        top = s["errors"][0] if s.get("errors") else None
        direct = s.get("server_connections_direct_peak")
        lines.append(
            f"{name}: peak {_n(s['server_connections_peak'])} PostgreSQL connections for the app role"
            + (
                f" ({direct} at most straight from the app, not through PgBouncer)"
                if direct is not None
                else ""
            )
            + f"; HTTP {http[1]:,} of {http[0]:,} failed, WebSocket {ws[1]:,} of {ws[0]:,} failed"
            + (f"; most frequent: {top['request']} → {top['error'][:90]} (×{top['count']:,})" if top else "")
        )
    return lines


def verdict_screen(summaries: list[dict], names: list[str], scenario, *, reference: str, report: Path) -> str:
    rows = [HEADERS, *_rows(summaries, names)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS))]
    rule = "─" * min(120, sum(widths) + 2 * len(widths))
    out = [rule, f"The proof: {scenario.describe()}", rule]
    out += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    out += ["", *_leak_lines(summaries, names), ""]
    out.append(f"Report: {report}   Plot: {report.with_name(PLOT_NAME)}")
    chosen = summaries[names.index(reference)]
    if chosen["gate"]["passed"]:
        out.append(
            f"PASS: {reference} stayed within {chosen['server_connection_bound']} "
            "PostgreSQL server connections "
            f"(peak {chosen['server_connections_peak']}) with {chosen['failures']} failed requests."
        )
    else:
        out.append(f"FAIL: {reference}: " + "; ".join(chosen["gate"]["reasons"]))
    out.append(rule)
    return "\n".join(out)


def write_report(summaries: list[dict], names: list[str], scenario, results: Path, *, reference: str) -> Path:
    """report.md and the plot in ``results``; each run's files are in results/<name>/."""
    samples = {name: _samples(results / name) for name in names}
    plot(summaries, names, samples, results / PLOT_NAME)
    bound = summaries[0]["server_connection_bound"]
    lines = [
        "# The proof: PostgreSQL server connections under WebSocket load",
        "",
        f"Scenario: {scenario.describe()}.",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}; "
        f"written {datetime.now(UTC).isoformat(timespec='seconds')}.",
        f"Bound: {bound} server connections for the app role, read from {summaries[0].get('bound_source')} "
        "(default_pool_size + reserve_pool_size, capped by max_db_connections).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
        *("| " + " | ".join(row) + " |" for row in _rows(summaries, names)),
        "",
        "Latency and msg/s: WebSocket message round trips (send → ack after commit) while all users "
        "were connected. Requests and failures: every HTTP request, WebSocket connect and message "
        "of the whole run.",
        "",
        f"![users, server connections and PgBouncer clients over time]({PLOT_NAME})",
        "",
        "## Which traffic leaks",
        "",
        *(f"- {line}" for line in _leak_lines(summaries, names)),
        "",
        "Under Daphne every HTTP request runs its database work on a thread of its own "
        "(Django's ASGI handler gives each request a fresh thread-sensitive context). With "
        "CONN_MAX_AGE > 0 that thread's connection is kept for reuse by a thread that never "
        "comes back, so each request can leave a PostgreSQL connection behind until Python's "
        "garbage collector happens to free it: the count climbs to max_connections and "
        'clients get "too many clients already" (the app answers such requests with HTTP 503 '
        '"unavailable"). WebSocket consumers do not leak this way: '
        "`database_sync_to_async` runs all of a process's consumer database work on one thread, "
        "so they hold one connection per Daphne process (see `make bench`, WebSocket only). "
        "With CONN_MAX_AGE=0 every request and message closes (or returns to Django's pool) its "
        "connection, and PgBouncer in transaction mode caps what reaches PostgreSQL.",
        "",
    ]
    for name, s in zip(names, summaries, strict=True):
        lines += [f"## {name}", "", s.get("description") or "", ""]
        lines += ["| request | requests | failures | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
        for key, f in s["requests_by_name"].items():
            lines.append(
                f"| {key} | {f['requests']:,} | {f['failures']:,} "
                f"| {f.get('p50', '-')} | {f.get('p95', '-')} | {f.get('p99', '-')} |"
            )
        if s.get("errors"):
            lines += ["", "Most frequent errors:", ""]
            lines += [f"- {e['request']}: {e['error'][:160]} (×{e['count']:,})" for e in s["errors"][:5]]
        lines += [
            "",
            f"Files: `{name}/summary.json`, `{name}/samples.jsonl` (`.csv`), `{name}/locust.log`.",
            "",
        ]
    verdict = "bounded" if summaries[names.index(reference)]["gate"]["passed"] else "NOT bounded"
    lines.append(f"Verdict: the reference ({reference}) is {verdict}.")
    report = results / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def _samples(directory: Path) -> list[dict]:
    path = directory / "samples.jsonl"
    return read_samples(path) if path.exists() else []


def plot(summaries: list[dict], names: list[str], samples: dict[str, list[dict]], path: Path) -> None:
    """One figure, one panel per config side by side, same axes: the contrast is the point."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(summaries), figsize=(6.5 * len(summaries), 4.8), sharey=True, squeeze=False
    )
    peak_users = max((s.get("users") or 0 for row in samples.values() for s in row), default=0)
    for axis, name, summary in zip(axes[0], names, summaries, strict=True):
        rows = samples[name]
        t = [s["elapsed_s"] for s in rows]

        def series(pick, rows=rows):
            return [pick(s) for s in rows]

        draw_connections(
            axis,
            rows,
            bound=summary["server_connection_bound"],
            max_connections=summary.get("postgres_max_connections"),
        )
        axis.set_title(f"{name}: {summary['verdict']}\n{summary['config']}", fontsize=10)
        users = axis.twinx()
        users.fill_between(
            t, series(lambda s: s.get("users") or 0), color="tab:green", alpha=0.12, step="post"
        )
        users.set_ylim(0, max(1, peak_users) * 1.1)
        users.set_ylabel("Locust users", color="tab:green")
    axes[0][0].set_ylabel("connections")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    figure.suptitle("Users (green), PostgreSQL server connections and PgBouncer clients over time")
    figure.tight_layout(rect=(0, 0.1, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)
