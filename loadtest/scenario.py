"""A load scenario: its options, defined once, and how it becomes a Locust command line.

Every option of the chat load test is a field of ``Scenario`` below, with its
flag, default and help. From that one definition come: the options Locust
accepts (locust_hooks.py registers them), the Locust command line `make demo`,
`make bench` and `python -m loadtest.prove` run (``locust_argv``), and the
options of those commands (``add_arguments``). README.md ("Load test") lists
them, and a test holds the list to this definition.
"""

import argparse
import math
import resource
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

LOADTEST = Path(__file__).resolve().parent
PROJECT = LOADTEST.parent
LOCUSTFILE = LOADTEST / "locustfile.py"
LOCUST_CONF = LOADTEST / "locust.conf"
# Locust's output lines that start with this are its progress (locust_hooks.py
# prints them), which the runner echoes while the run goes on.
PROGRESS_PREFIX = "[progress]"
MODES = ("chat", "saturate")


def raise_open_file_limit() -> None:
    """Soft limit on open files up to the hard one, for this process and what it starts.

    Every WebSocket and keep-alive HTTP connection is a descriptor, on the load
    side and on the server side alike (Daphne, restarted from `make demo`, inherits
    the limit): 1,024, a common soft limit, runs out at about 500 users per process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def option(default, flag: str, help: str, *, locust: bool = True, choices: tuple | None = None):
    """A scenario field with its command-line flag. ``locust=False``: not a Locust option
    of ours (Locust has its own, or the runner derives it), but still one of our commands'."""
    return field(default=default, metadata={"flag": flag, "help": help, "locust": locust, "choices": choices})


@dataclass(frozen=True)
class Scenario:
    users: int = option(1000, "--users", "simulated users", locust=False)
    hold_s: float = option(60.0, "--duration", "seconds at full load, after the ramp", locust=False)
    # Each arrival costs three HTTP requests and a WebSocket handshake; an arrival rate
    # two Daphne processes absorb while serving the users already in (README, "Load test").
    spawn_rate: float = option(25.0, "--spawn-rate", "users arriving per second", locust=False)
    mode: str = option(
        "chat",
        "--mode",
        "chat: a real user's page, history and paced messages; "
        "saturate: WebSocket only, next message right after the ack (throughput)",
        choices=MODES,
    )
    pace_s: float = option(5.0, "--pace", "chat mode: seconds between a user's messages (±50%%)")
    max_rate: float = option(
        0.0, "--max-rate", "saturate mode: at most this many messages/s per user (0: back to back)"
    )
    room_size: int = option(5, "--room-size", "members per room: the broadcast fan-out")
    history_every_s: float = option(
        30.0, "--history-every", "chat mode: seconds between HTTP history reloads (0: once)"
    )
    room_prefix: str = option("load", "--room-prefix", "rooms are named PREFIX-WORKER-N")
    ack_timeout_s: float = option(10.0, "--ack-timeout", "seconds to wait for a message's ack")
    connect_timeout_s: float = option(10.0, "--connect-timeout", "seconds for a WebSocket to be ready")
    reconnect_max_s: float = option(
        30.0, "--reconnect-max", "cap of the reconnect backoff (full jitter), seconds"
    )
    idle_after_s: float = option(
        10.0, "--idle-after", "seconds idle after the load before server_connections_after"
    )
    max_fail_ratio: float = option(0.0, "--max-fail-ratio", "gate: allowed failed/requests")
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
        ]
        for item in locust_options():
            value = getattr(self, item.name)
            argv += [item.metadata["flag"], f"{value:g}" if isinstance(value, float) else str(value)]
        argv += [
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


def _options():
    return [item for item in fields(Scenario) if "flag" in item.metadata]


def locust_options():
    """The fields that are Locust options of ours (registered by locust_hooks.py)."""
    return [item for item in _options() if item.metadata["locust"]]


def dest(item) -> str:
    """Where argparse (and Locust's parsed_options) keep a field's value: its flag's name."""
    return item.metadata["flag"].removeprefix("--").replace("-", "_")


def add_arguments(parser, names: tuple[str, ...] | None = None) -> None:
    """Add the scenario's options (all, or the fields named) to an argparse parser.

    Defaults are left to the Scenario itself (``from_arguments``), so a command that
    sets a field of its own (bench's room prefix, say) is not overridden by the default.
    """
    for item in _options():
        if names is None or item.name in names:
            default = item.default
            parser.add_argument(
                item.metadata["flag"],
                type=type(default),
                default=argparse.SUPPRESS,
                choices=item.metadata["choices"],
                help=f"{item.metadata['help']} (default {default})",
            )


def from_arguments(args, **base) -> Scenario:
    """A Scenario from ``base`` with whatever options the command line gave on top."""
    given = {item.name: getattr(args, dest(item)) for item in _options() if hasattr(args, dest(item))}
    return Scenario(**{**base, **given})
