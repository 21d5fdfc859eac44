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
"""

import argparse
import json
import sys
from pathlib import Path

from loadtest.faults import FAULTS, problems, run, table
from native.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated, from: " + ", ".join(FAULTS)
    )
    parser.add_argument("--results", type=Path, default=Path("results/latest/chaos"))
    args = parser.parse_args(argv)
    faults = [name.strip() for name in args.faults.split(",") if name.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")

    stack = Stack()
    print(f"chaos: {args.clients} clients posting while {len(faults)} fault(s) are injected", flush=True)
    summary = run(stack, faults, clients=args.clients)
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
