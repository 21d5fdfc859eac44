"""The gate: a run fails when PostgreSQL saw more app connections than the configs
promise, or when too many requests failed.

Used at the end of every Locust run (its exit code) and by `make demo` / prove;
also runnable on a finished run:

    python -m loadtest.gate results/latest/pooled/summary.json [--max-fail-ratio 0.01]

which re-derives the peak from the run's samples.jsonl when it is there, and
the bound from pgbouncer/pgbouncer.ini, rather than trusting the summary's copy.
"""

import argparse
import json
import sys
from pathlib import Path

from loadtest.observe import connection_bound

BOUNDED, UNBOUNDED, UNKNOWN = "bounded", "unbounded", "unknown"


def verdict(peak: int | None, bound: int | None) -> str:
    if peak is None or bound is None:
        return UNKNOWN  # no monitor, or it never got a reading: nothing is proven
    return BOUNDED if peak <= bound else UNBOUNDED


def peak_from_samples(samples: list[dict]) -> int | None:
    readings = [s["app_server_connections"] for s in samples if s.get("app_server_connections") is not None]
    return max(readings) if readings else None


def reasons_to_fail(summary: dict, max_fail_ratio: float) -> list[str]:
    """Why this run fails the gate; empty when it passes."""
    reasons = []
    peak, bound = summary.get("server_connections_peak"), summary["server_connection_bound"]
    if bound is None:
        pass  # run without the monitor (e.g. Locust's web UI by hand): only failures are gated
    elif peak is None:
        reasons.append("no server-connection reading: set MONITOR_POSTGRES_DSN (a pg_monitor role)")
    elif peak > bound:
        reasons.append(f"peak app-role server connections {peak} exceed the bound {bound}")
    requests, failures = summary.get("requests", 0), summary.get("failures", 0)
    if not requests:
        reasons.append("no requests were made")
    elif failures / requests > max_fail_ratio:
        reasons.append(
            f"{failures} of {requests} requests failed ({failures / requests:.2%}), "
            f"more than the allowed {max_fail_ratio:.2%}"
        )
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("summary", type=Path, help="a run's summary.json")
    parser.add_argument(
        "--max-fail-ratio", type=float, default=0.0, help="allowed failed/requests (default 0)"
    )
    args = parser.parse_args(argv)

    summary = json.loads(args.summary.read_text())
    samples_file = args.summary.with_name("samples.jsonl")
    if samples_file.exists():
        from loadtest.monitor import read_samples

        summary["server_connections_peak"] = peak_from_samples(read_samples(samples_file))
    summary["server_connection_bound"] = connection_bound()
    reasons = reasons_to_fail(summary, args.max_fail_ratio)
    peak, bound = summary["server_connections_peak"], summary["server_connection_bound"]
    print(
        f"{summary.get('config', args.summary.parent.name)}: {verdict(peak, bound)} "
        f"(peak {peak}, bound {bound})"
    )
    for reason in reasons:
        print(f"  FAIL {reason}")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())
