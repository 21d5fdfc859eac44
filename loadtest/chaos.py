"""make chaos: inject faults while chat clients post messages; no acknowledged message may be lost.

Faults, in turn, each while the load runs:
  pgbouncer-pause    PAUSE/RESUME on PgBouncer's admin console (3 s)
  pgbouncer-restart  PgBouncer stopped and started again
  postgres-restart   PostgreSQL stopped (fast shutdown) and started again
  pool-saturated     every server connection held by long transactions for longer than
                     query_wait_timeout; statement_timeout cuts each statement
  daphne-killed      one Daphne process killed with SIGKILL; supervisord restarts it

Every acknowledged message id is checked in PostgreSQL afterwards. Errors are
counted by kind: error frames and close codes are clear; a reply that never
comes (a hang) is not. Writes results/latest/chaos/summary.json and prints a
table; exits non-zero when a message was lost, a client hung, a service did not
recover within RECOVERY_LIMIT_S, or server connections exceeded the bound.

--app-setting NAME=VALUE (repeatable) runs the faults against the app restarted with
that setting on top of how it runs, e.g. CHAT_DATABASE_THREADS=4; afterwards the app
is restarted as it was.
"""

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from loadtest.faults import FAULTS, problems, run, table
from native.layout import StackError
from native.stack import Stack


def app_setting(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name.isidentifier() or name != name.upper():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE, e.g. CHAT_DATABASE_THREADS=4")
    return name, value


@contextlib.contextmanager
def app_with(stack: Stack, settings: dict[str, str]) -> Iterator[dict[str, str]]:
    """The running app restarted with ``settings`` on top of its own, for the block; then as it
    was. Yields every setting it runs with beyond its profile's."""
    running = stack.running_app()
    if running is None:
        raise StackError("the app is not running: start the stack first (make up)")
    profile, extra_env = running
    if not settings:
        yield extra_env
        return
    stack.restart_app(profile, {**extra_env, **settings})
    try:
        yield {**extra_env, **settings}
    finally:
        stack.restart_app(profile, extra_env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS)
    )
    parser.add_argument("--results", type=Path, default=Path("results/latest/chaos"))
    parser.add_argument(
        "--app-setting",
        type=app_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="restart the app with this setting for the run, e.g. CHAT_DATABASE_THREADS=4 (repeatable)",
    )
    args = parser.parse_args(argv)
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")

    stack = Stack()
    try:
        with app_with(stack, dict(args.app_setting)) as settings:
            shown = " ".join(f"{name}={value}" for name, value in sorted(settings.items()))
            print(
                f"chaos: {args.clients} clients posting while {len(faults)} fault(s) are injected"
                + (f", the app with {shown}" if shown else ""),
                flush=True,
            )
            summary = {**run(stack, faults, clients=args.clients), "app_settings": settings}
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    found = problems(summary)
    for problem in found:
        print(f"FAIL {problem}")
    print(f"{'FAILED' if found else 'PASSED'}: {args.results / 'summary.json'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
