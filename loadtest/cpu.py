"""Where the cores go: CPU seconds by process kind across one run, from the kernel's accounting.

Each native service is a process tree under supervisord (PostgreSQL's backends under
the postmaster, the Daphne processes under the app's own supervisord). A tree's CPU
is what its live processes used (utime + stime in /proc/<pid>/stat) plus what its
ended ones used, which the kernel adds to whoever reaped them (cutime + cstime).
Locust is this process's child: getrusage(RUSAGE_CHILDREN) counts it once it has
been waited for.
"""

import os
import resource
from pathlib import Path

# The native stack's services, by the name the table shows.
SERVICES = {"Daphne": "app", "PostgreSQL": "postgres", "PgBouncer": "pgbouncer", "Redis": "redis"}
LOAD_GENERATOR = "Locust"
KINDS = (*SERVICES, LOAD_GENERATOR)
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its reaped children)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The command name, in parentheses, may hold spaces: split after its last ')'.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parent, utime, stime, cutime, cstime = int(fields[1]), *map(int, fields[11:15])
        found[int(entry.name)] = (parent, (utime + stime + cutime + cstime) / TICKS_PER_S)
    return found


def tree_seconds(root: int | None, processes: dict[int, tuple[int, float]]) -> float:
    if root is None or root not in processes:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        total += processes[pid][1]
        pending.extend(children.get(pid, ()))
    return total


def snapshot(stack) -> dict[str, float]:
    """CPU seconds so far of each kind; subtract two snapshots for a run's share."""
    processes = process_table()
    seconds = {kind: tree_seconds(stack.pid(service), processes) for kind, service in SERVICES.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds[LOAD_GENERATOR] = children.ru_utime + children.ru_stime
    return seconds


def per_message(before: dict[str, float], after: dict[str, float], messages: int) -> dict[str, float] | None:
    """Milliseconds of CPU per message of each kind between two snapshots."""
    if not messages:
        return None
    return {kind: round(1000 * (after[kind] - before[kind]) / messages, 3) for kind in KINDS}
