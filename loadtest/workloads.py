"""The saturating WebSocket workload `make bench` measures and `make profile` samples."""

from loadtest.scenario import Scenario
from native.stack import Stack
from probes.chat import ChatHttp


def throughput_scenario(users: int, hold_s: float) -> Scenario:
    """Each user's next message right after its ack, WebSocket only, rooms of 5."""
    return Scenario(
        users=users,
        hold_s=hold_s,
        spawn_rate=max(50.0, users / 2),
        mode="saturate",
        # Under the server's per-socket limit (CHAT_RATE_PER_S, 20/s): while the first
        # users are alone on the server, each could outrun it and be refused
        # (rate_limited); at full load each gets a share far below this cap.
        max_rate=15,
        room_size=5,
        room_prefix="bench",
        idle_after_s=5,
        max_fail_ratio=0.0,
    )


def prepare_rooms(stack: Stack, scenario: Scenario) -> None:
    """Create the saturating users' rooms up front, so the measured runs make no HTTP requests."""
    http = ChatHttp(stack.app_url)
    for number in range(-(-scenario.users // scenario.room_size)):
        http.ensure_room(f"{scenario.room_prefix}-0-{number}")
