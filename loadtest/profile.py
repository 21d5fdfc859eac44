"""python -m loadtest.profile: where Daphne's CPU goes per message (`make profile`).

Starts the native stack in the shipped profile, drives `make bench`'s saturating
WebSocket scenario against it, and samples every Daphne process with py-spy (from
PyPI, in requirements-dev) for the middle of the run. Writes, per process, a flame
graph (daphne-PID.svg, open it in a browser) and py-spy's raw stacks, and prints the
functions that take the most samples, by own time and with what they call, and the
share of the database thread against the event loop's. The stack is left running.

py-spy reads another process's memory: it needs root (sudo) or the same user as the
Daphne processes with ptrace allowed (kernel.yama.ptrace_scope 0).
"""

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from loadtest import cpu
from loadtest.runner import Target, run_target, wait_healthy
from loadtest.scenario import PROJECT, raise_open_file_limit
from loadtest.workloads import prepare_rooms, throughput_scenario
from native.layout import Config, StackError
from native.profiles import SHIPPED
from native.stack import Stack

PY_SPY = Path(sys.executable).with_name("py-spy")
TOP = 25


def record(pid: int, seconds: float, out: Path) -> None:
    """Sample one process for ``seconds``: the first half into a flame graph (SVG), the second
    into raw stacks for the summary. py-spy writes one format per run, and two recorders
    on one process at once would stop it twice as often."""
    half = str(max(1, int(seconds / 2)))
    for form, path in (("flamegraph", out / f"daphne-{pid}.svg"), ("raw", out / f"daphne-{pid}.txt")):
        subprocess.run(
            [PY_SPY, "record", "--pid", str(pid), "--duration", half, "--rate", "200", "--threads",
             "--nonblocking", "--format", form, "--output", path],
            check=True, capture_output=True, timeout=seconds + 30,
        )  # fmt: skip


def summarize(folded: str) -> str:
    """The functions with the most samples: own time (the frame on top) and total time
    (anywhere in the stack), and the share of each thread."""
    own, total, threads = Counter(), Counter(), Counter()
    samples = 0
    for line in folded.splitlines():
        # "thread (TID): NAME;frame (file:line);... COUNT"; a line py-spy could not read
        # whole (it samples a running process) is left out.
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        threads[frames[0].partition(": ")[2]] += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):
            total[frame] += count
    if not samples:
        return "no samples (was the process busy?)"

    def shares(counts: Counter, top: int | None = None) -> list[str]:
        return [f"  {100 * n / samples:5.1f}%  {name}" for name, n in counts.most_common(top)]

    lines = [f"{samples} samples", "", "by thread:", *shares(threads)]
    lines += ["", f"top {TOP} by own time:", *shares(own, TOP)]
    lines += ["", f"top {TOP} by total time:", *shares(total, TOP)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="saturating users (default %(default)s)")
    parser.add_argument("--hold", type=float, default=30, help="seconds at full load (%(default)s)")
    parser.add_argument("--sample", type=float, default=15, help="seconds py-spy samples (%(default)s)")
    parser.add_argument(
        "--results", type=Path, default=PROJECT / "results" / "latest", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        parser.error(f"{PY_SPY} is missing: make venv installs it (requirements-dev)")
    if args.sample >= args.hold:
        parser.error("--sample must be shorter than --hold, to sample the full load only")
    out = args.results / "profile"
    out.mkdir(parents=True, exist_ok=True)
    raise_open_file_limit()
    stack = Stack(Config())
    scenario = throughput_scenario(args.users, args.hold)
    try:
        stack.up(SHIPPED)
        stack.restart_app(SHIPPED)
        wait_healthy(stack.app_url)
        prepare_rooms(stack, scenario)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pids = stack.daphne_pids()
    target = Target("profile", stack.app_url, f"shipped ({SHIPPED.name})")
    failures: list[BaseException] = []

    def sample_in_the_middle() -> None:
        try:
            time.sleep(scenario.ramp_s + (args.hold - args.sample) / 2)
            recorders = [threading.Thread(target=record, args=(pid, args.sample, out)) for pid in pids]
            for recorder in recorders:
                recorder.start()
            for recorder in recorders:
                recorder.join()
        except BaseException as error:  # shown after the run, as it was
            failures.append(error)

    sampler = threading.Thread(target=sample_in_the_middle)
    before = cpu.snapshot(stack)
    sampler.start()
    run = run_target(target, scenario, out / "run", stack.monitor_env())
    sampler.join()
    if failures:
        raise failures[0]
    sent = run["requests_by_name"].get("WS message", {}).get("requests", 0)
    per_message = cpu.per_message(before, cpu.snapshot(stack), sent)
    print(f"{sent:,} messages; CPU ms per message: {per_message}")
    for pid in pids:
        print(f"\n=== Daphne process {pid} ({out / f'daphne-{pid}.svg'}) ===")
        print(summarize((out / f"daphne-{pid}.txt").read_text(errors="replace")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
