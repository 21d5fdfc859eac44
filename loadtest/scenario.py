"""A load scenario, and how it becomes a Locust command line.

The one place `make demo`, `make bench` and `python -m loadtest.prove` turn
"N users for S seconds" into Locust options, so they all run the same thing.
"""

import math
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

LOADTEST = Path(__file__).resolve().parent
PROJECT = LOADTEST.parent
LOCUSTFILE = LOADTEST / "locustfile.py"
LOCUST_CONF = LOADTEST / "locust.conf"
# Locust's output lines that start with this are its progress (locust_hooks.py
# prints them), which prove.py echoes while the run goes on.
PROGRESS_PREFIX = "[progress]"


def raise_open_file_limit() -> None:
    """Soft limit on open files up to the hard one, for this process and what it starts.

    Every WebSocket and keep-alive HTTP connection is a descriptor, on the load
    side and on the server side alike (Daphne, restarted from `make demo`, inherits
    the limit): 1,024, a common soft limit, runs out at about 500 users per process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True)
class Scenario:
    users: int = 1000
    hold_s: float = 60.0  # seconds at full load, after the ramp
    # Users arriving per second. Each arrival costs three HTTP requests and a WebSocket
    # handshake: at 100/s two Daphne processes fell seconds behind (p99 4.6 s, handshakes
    # reset) and took ~10 s after the ramp to recover; 25/s kept p99 under 250 ms.
    spawn_rate: float = 25.0
    mode: str = "chat"  # or "saturate" (see locustfile.py)
    pace_s: float = 5.0
    max_rate: float = 0.0  # saturate mode: messages/s per user, 0 = back to back
    room_size: int = 5
    history_every_s: float = 30.0
    room_prefix: str = "load"
    idle_after_s: float = 10.0
    max_fail_ratio: float = 0.0
    expect_workers: int = 0  # >0: run as a Locust master and wait for that many workers

    @property
    def ramp_s(self) -> int:
        return math.ceil(self.users / self.spawn_rate)

    @property
    def run_time_s(self) -> int:
        return self.ramp_s + math.ceil(self.hold_s)

    @property
    def time_limit_s(self) -> float:
        """When a run that has not ended by itself is stopped: its own length plus slack."""
        return self.run_time_s + self.idle_after_s + 120

    def describe(self) -> str:
        if self.mode == "saturate":
            what = "WebSocket only, each user's next message right after its ack"
        else:
            what = (
                f"a message every {self.pace_s:g} s (±50%), page + history over HTTP at start "
                f"and every {self.history_every_s:g} s"
            )
        return (
            f"{self.users:,} users in rooms of {self.room_size}, {what}; "
            f"ramp {self.ramp_s} s at {self.spawn_rate:g}/s, then {self.hold_s:g} s at full load"
        )

    def locust_argv(self, host: str, results_dir: Path, label: str, description: str) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "locust",
            "--config",
            str(LOCUST_CONF),
            "--locustfile",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            host,
            "--users",
            str(self.users),
            "--spawn-rate",
            f"{self.spawn_rate:g}",
            "--run-time",
            f"{self.run_time_s}s",
            "--mode",
            self.mode,
            "--pace",
            f"{self.pace_s:g}",
            "--max-rate",
            f"{self.max_rate:g}",
            "--room-size",
            str(self.room_size),
            "--history-every",
            f"{self.history_every_s:g}",
            "--room-prefix",
            self.room_prefix,
            "--idle-after",
            f"{self.idle_after_s:g}",
            "--max-fail-ratio",
            f"{self.max_fail_ratio:g}",
            "--results-dir",
            str(results_dir),
            "--run-label",
            label,
            "--description",
            description,
            "--csv",
            str(results_dir / "locust"),
        ]
        if self.expect_workers:
            # Bounded: a worker that never turns up ends the run instead of hanging it.
            argv += [
                "--master",
                "--expect-workers",
                str(self.expect_workers),
                "--expect-workers-max-wait",
                "120",
            ]
        return argv
