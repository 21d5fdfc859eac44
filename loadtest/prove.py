"""python -m loadtest.prove: the proof's scenario against running targets, one after the other.

    MONITOR_POSTGRES_DSN='host=postgres dbname=chat user=chat_monitor password=...' \\
    MONITOR_PGBOUNCER_DSN='host=pgbouncer port=6432 dbname=pgbouncer user=pgbouncer_stats password=...' \\
    python -m loadtest.prove --target pooled=http://app:8000 --target naive=http://app-naive:8000 \\
        --users 1000 --duration 60 --results results/compose

Each target gets the same Locust run (loadtest/locustfile.py, chat mode) with the
connection monitor, and its own results/<name>/summary.json, samples and log;
then one report and plot for all, and a one-screen verdict. Nothing is
restarted: this is what the Compose `loadtest` service runs, and `make demo`
runs the same code after restarting the native app in each profile.

Exit status: 0 when the reference target (the first, or --reference) stayed
within the server-connection bound with failures under --max-fail-ratio; 1
otherwise; 2 on a usage or set-up error. The other targets are measured and
shown as they behave, and do not change the exit status.
"""

import argparse
import os
import sys
from pathlib import Path

from loadtest.runner import Target, prove
from loadtest.scenario import add_arguments, from_arguments


def parse_target(text: str) -> Target:
    name, sep, url = text.partition("=")
    if not sep or not name or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=http://host:port, got {text!r}")
    return Target(name, url.rstrip("/"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.prove",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target", action="append", type=parse_target, required=True, help="NAME=URL, repeatable"
    )
    add_arguments(
        parser, ("users", "hold_s", "spawn_rate", "pace_s", "room_size", "history_every_s", "max_fail_ratio")
    )
    parser.add_argument("--expect-workers", type=int, default=0, help="run as Locust master for N workers")
    parser.add_argument(
        "--reference", help="the target whose verdict is the exit status (default: the first)"
    )
    parser.add_argument("--results", type=Path, default=Path("results/latest"), help="(default %(default)s)")
    parser.add_argument(
        "--results-shown-as",
        type=Path,
        help="the path printed for --results: where the reader finds it (e.g. on the host, for a container)",
    )
    args = parser.parse_args(argv)

    if not os.environ.get("MONITOR_POSTGRES_DSN"):
        parser.error("set MONITOR_POSTGRES_DSN (and MONITOR_PGBOUNCER_DSN): the proof needs the monitor")
    names = [t.name for t in args.target]
    if len(set(names)) != len(names):
        parser.error("target names must differ")
    reference = args.reference or names[0]
    if reference not in names:
        parser.error(f"--reference {reference} is not a target")
    scenario = from_arguments(args, expect_workers=args.expect_workers)
    try:
        return prove(
            args.target, scenario, args.results, reference=reference, results_shown_as=args.results_shown_as
        )
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
