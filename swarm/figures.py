"""python -m swarm.figures RESULTS: the figures `make swarm-test` measured, as Markdown tables.

RESULTS is results/swarm-test: one folder per PgBouncer topology, each with the
figures.jsonl its tests wrote (tests/swarm). The swarm tests write the tables to
RESULTS/figures.md at the end of their session; the README quotes that file.

A fault lasted: the rolling deploy until every replica was replaced, a drained or
stopped node until its app replica ran elsewhere. Recovery: from the fault's start (the
deploy's end) until a new client's message was acknowledged through every node's proxy.
"""

import json
import sys
from pathlib import Path


def read(results: Path) -> list[dict]:
    rows = []
    for path in sorted(results.glob("*/figures.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def tables(rows: list[dict]) -> str:
    steady = [row for row in rows if row["run"] == "steady load"]
    growth = [row for row in rows if row["run"].endswith("app node(s)")]
    faults = [row for row in rows if "sent" in row]
    out = [
        "| topology | nodes | users | messages/s | p50 / p95 / p99 ms "
        "| server connections peak / bound | per PgBouncer |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in steady:
        latency = row["latency_ms"]
        per = ", ".join(f"{name} {peak}" for name, peak in sorted(row["per_pgbouncer_peak"].items()))
        out.append(
            f"| {row['topology']} | {row['nodes']} | {row['users']} | {row['messages_per_s']:g} "
            f"| {latency['p50']} / {latency['p95']} / {latency['p99']} "
            f"| {row['server_connections_peak']} / {row['bound']} | {per} |"
        )
    out += [
        "",
        "| topology | app nodes | users | messages/s | server connections peak / bound |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in growth:
        out.append(
            f"| {row['topology']} | {row['run'].split()[0]} | {row['users']} | {row['messages_per_s']:g} "
            f"| {row['server_connections_peak']} / {row['bound']} |"
        )
    out += [
        "",
        "| topology | fault | messages sent | acknowledged | lost "
        "| fault lasted s | recovery s | clients saw |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in faults:
        seen = {**{f"close {code}": n for code, n in row["close_codes"].items()}, **row["errors_by_kind"]}
        saw = ", ".join(f"{kind} {n}" for kind, n in sorted(seen.items())) or "nothing"
        if "noticed_on" in row:  # the PgBouncer restart: which nodes' app tasks counted errors
            saw += f"; app errors on {', '.join(row['noticed_on']) or 'no node'}"
        out.append(
            f"| {row['topology']} | {row['run']} | {row['sent']} | {row['acknowledged']} | {row['lost']} "
            f"| {row.get('deploy_s', row.get('replica_moved_s', ''))} | {row['recovery_s']} "
            f"| {saw} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m swarm.figures RESULTS_DIR (results/swarm-test)", file=sys.stderr)
        return 2
    rows = read(Path(argv[0]))
    if not rows:
        print(f"error: no */figures.jsonl under {argv[0]}: run `make swarm-test` first", file=sys.stderr)
        return 1
    sys.stdout.write(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
