"""python -m loadtest.bench_plot [bench.json]: redraw `make bench`'s plot (bench.png) from bench.json.

`make bench` draws it at the end; loadtest/bench_table.py says what it shows.
"""

import argparse
import json
import sys
from pathlib import Path

from loadtest.bench_table import configuration_rows, plot
from loadtest.scenario import PROJECT


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
