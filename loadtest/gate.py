"""python -m loadtest.gate: the gate (loadtest/verdicts.py) applied again to a finished run.

    python -m loadtest.gate results/latest/pooled/summary.json [--max-fail-ratio 0.01]

which re-derives the peak from the run's samples.jsonl when it is there, and
the bound from pgbouncer/pgbouncer.ini, rather than trusting the summary's copy.
"""

import argparse
import json
import sys
from pathlib import Path

from loadtest.monitor import read_samples
from loadtest.verdicts import peak_from_samples, reasons_to_fail, verdict
from probes.connections import connection_bound


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
