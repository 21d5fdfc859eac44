"""Running the proof's scenario against targets: one Locust run each, then the report.

The library behind `python -m loadtest.prove` (targets already running, as in
Compose) and `make demo` (the native app restarted in each profile), and the
single-run helper `make bench` uses.
"""

import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loadtest.monitor import ConnectionMonitor, MonitorDsns
from loadtest.report import verdict_screen, write_report
from loadtest.scenario import PROGRESS_PREFIX, PROJECT, Scenario
from probes.connections import APP_ROLE


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
    results_shown_as: Path | None = None,
) -> int:
    """Run the scenario against each target in turn, write the report, print the verdict.

    ``before_each`` lets the native demo restart its app in the target's profile.
    ``results_shown_as``: where the reader finds ``results`` (a container's mount, seen from the host).
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
    shown = (results_shown_as or results) / report.name
    print(verdict_screen(summaries, names, scenario, reference=reference, report=shown), flush=True)
    chosen = summaries[names.index(reference)]
    return 0 if chosen["gate"]["passed"] else 1
