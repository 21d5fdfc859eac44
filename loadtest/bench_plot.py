"""python -m loadtest.bench_plot [bench.json]: draw `make bench`'s table as bench.png.

Two panels that share the configurations: messages per second (each round a dot,
the mean a bar), and the PostgreSQL server connections each configuration peaked
at against PgBouncer's bound. `make bench` draws it at the end; run this module to
redraw it from a finished run's bench.json.
"""

import argparse
import json
import sys
from pathlib import Path

from loadtest.scenario import PROJECT
from native.profiles import SHIPPED


def configuration_rows(result: list[dict]) -> list[dict]:
    """The per-configuration rows of bench.json (not the ceiling and capacity rows)."""
    return [row for row in result if "messages_per_s_runs" in row]


def plot(rows: list[dict], path: Path) -> None:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_plot", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "bench_json",
        type=Path,
        nargs="?",
        default=PROJECT / "results" / "latest" / "bench.json",
        help="(default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        rows = configuration_rows(json.loads(args.bench_json.read_text()))
    except (OSError, ValueError) as error:
        print(f"error: cannot read {args.bench_json}: {error}; run `make bench` first", file=sys.stderr)
        return 2
    if not rows:
        print(
            f"error: {args.bench_json} holds no configuration rows; run `make bench` first", file=sys.stderr
        )
        return 2
    path = args.bench_json.with_name("bench.png")
    plot(rows, path)
    print(f"Plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
