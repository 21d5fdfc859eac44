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
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.monitor import ConnectionMonitor, MonitorDsns
from loadtest.observe import APP_ROLE
from loadtest.report import verdict_screen, write_report
from loadtest.scenario import PROGRESS_PREFIX, PROJECT, Scenario


@dataclass(frozen=True)
class Target:
    name: str  # its folder under the results, and how the verdict names it
    url: str
    description: str = ""
    config: str = ""  # the summary's "config" (default: name), e.g. the native profile

    @property
    def label(self) -> str:
        return self.config or self.name


def run_target(
    target: Target, scenario: Scenario, results_dir: Path, env: dict[str, str] | None = None
) -> dict:
    """One Locust run against one target; returns its summary.json.

    Locust's own output goes to locust.log; its progress lines are echoed here.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "summary.json").unlink(missing_ok=True)
    argv = scenario.locust_argv(target.url, results_dir, target.label, target.description)
    log_path = results_dir / "locust.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            argv,
            cwd=PROJECT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # Bounded in time: a run that outlives its own length plus slack is stopped
        # (SIGTERM lets Locust write its summary; SIGKILL if even that hangs).
        watchdog = threading.Timer(scenario.time_limit_s, _stop, [process])
        watchdog.start()
        try:
            for line in process.stdout:
                log.write(line)
                if line.startswith(PROGRESS_PREFIX):
                    print("  " + line.removeprefix(PROGRESS_PREFIX).strip(), flush=True)
            process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                _stop(process)
    summary_path = results_dir / "summary.json"
    if not summary_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"Locust wrote no summary for {target.name} (exit {process.returncode}):\n{tail}")
    return json.loads(summary_path.read_text())


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    """Wait (bounded) until the target's /healthz answers 200: Compose may still be starting it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/healthz", timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/healthz did not answer 200 within {timeout:g}s")
        time.sleep(1)


def refuse_leftover_connections(target: Target, env: dict[str, str] | None) -> None:
    """Raise if PostgreSQL already holds app-role connections that are not PgBouncer's.

    Checked before the reference target, which reaches PostgreSQL only through
    PgBouncer: a naive app keeps what it leaked after its run, the monitor cannot
    tell whose they are, and would count them against the reference's verdict.
    """
    dsns = MonitorDsns.from_env({**os.environ, **(env or {})})  # what run_target gives Locust
    if dsns is None or dsns.pgbouncer is None:
        return  # without PgBouncer's side, direct connections cannot be told apart
    monitor = ConnectionMonitor(dsns)
    try:
        readings = []
        for _ in range(2):  # two samples: a server connection PgBouncer opens in between is not a leftover
            readings.append(monitor.sample().get("app_direct") or 0)
            time.sleep(0.5)
    finally:
        monitor.close()
    if min(readings) > 0:
        raise RuntimeError(
            f"before {target.name}: PostgreSQL already holds {min(readings)} {APP_ROLE} connection(s) "
            "that are not PgBouncer's, left by an earlier run, that would count against this one; "
            "restart the app that holds them (Compose: docker compose --profile loadtest restart "
            "app-naive) and run again"
        )


def prove(
    targets: list[Target],
    scenario: Scenario,
    results: Path,
    *,
    reference: str,
    before_each: Callable[[Target], None] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run the scenario against each target in turn, write the report, print the verdict.

    ``before_each`` lets the native demo restart its app in the target's profile.
    Returns the exit status (see the module's docstring).
    """
    print(f"The proof: {scenario.describe()}.", flush=True)
    summaries = []
    for number, target in enumerate(targets, 1):
        print(f"[{number}/{len(targets)}] {target.name}: {target.description or target.url}", flush=True)
        if before_each is not None:
            before_each(target)
        wait_healthy(target.url)
        if target.name == reference:
            refuse_leftover_connections(target, env)
        summaries.append(run_target(target, scenario, results / target.name, env))
    names = [t.name for t in targets]
    report = write_report(summaries, names, scenario, results, reference=reference)
    print(verdict_screen(summaries, names, scenario, reference=reference, report=report), flush=True)
    chosen = summaries[names.index(reference)]
    return 0 if chosen["gate"]["passed"] else 1


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
    parser.add_argument(
        "--users", type=int, default=Scenario.users, help="WebSocket users (default %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=Scenario.hold_s,
        help="seconds at full load, after the ramp (%(default)s)",
    )
    parser.add_argument("--spawn-rate", type=float, default=Scenario.spawn_rate, help="users/s (%(default)s)")
    parser.add_argument(
        "--pace", type=float, default=Scenario.pace_s, help="seconds between messages (%(default)s)"
    )
    parser.add_argument("--room-size", type=int, default=Scenario.room_size, help="(default %(default)s)")
    parser.add_argument("--max-fail-ratio", type=float, default=0.0, help="gate on the reference (default 0)")
    parser.add_argument("--expect-workers", type=int, default=0, help="run as Locust master for N workers")
    parser.add_argument(
        "--reference", help="the target whose verdict is the exit status (default: the first)"
    )
    parser.add_argument("--results", type=Path, default=Path("results/latest"), help="(default %(default)s)")
    args = parser.parse_args(argv)

    if not os.environ.get("MONITOR_POSTGRES_DSN"):
        parser.error("set MONITOR_POSTGRES_DSN (and MONITOR_PGBOUNCER_DSN): the proof needs the monitor")
    names = [t.name for t in args.target]
    if len(set(names)) != len(names):
        parser.error("target names must differ")
    reference = args.reference or names[0]
    if reference not in names:
        parser.error(f"--reference {reference} is not a target")
    scenario = Scenario(
        users=args.users,
        hold_s=args.duration,
        spawn_rate=args.spawn_rate,
        pace_s=args.pace,
        room_size=args.room_size,
        max_fail_ratio=args.max_fail_ratio,
        expect_workers=args.expect_workers,
    )
    try:
        return prove(args.target, scenario, args.results, reference=reference)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
