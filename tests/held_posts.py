"""Posts made to wait for one database call together (chat/posting.py), against the real stack.

The first Daphne process's database calls, as many as it runs at once, are each stuck
behind a lock on a room's row: an INSERT's foreign key check needs a share lock on it.
Posts sent meanwhile to that process wait for the next call, which stores them all
when the lock goes.
"""

import contextlib
import time
import uuid
from dataclasses import dataclass

from app_processes import per_process, scrape_until, served_by, wait_for_metrics
from pipelined import answers

from probes.chat import ChatHttp, ChatSocket
from probes.connections import APP_DATABASE, APP_ROLE

LOCK_SHOWS_WITHIN_S = 5.0


@dataclass
class HeldPosts:
    stack: object
    pid: int
    sockets: dict[str, ChatSocket]

    def wait_until_waiting(self, count: int) -> None:
        """Until the process reports ``count`` posts waiting for a database call."""
        samples = scrape_until(self.stack, lambda samples: self.waiting(samples) == count)
        assert self.waiting(samples) == count

    def waiting(self, samples) -> float | None:
        return per_process(samples, "chat_posts_waiting").get(self.pid)


def calls_at_once(stack) -> int:
    """How many database calls each process runs at once: CHAT_DATABASE_THREADS, or Channels' one thread."""
    _, extra_env = stack.running_app()
    return int(extra_env.get("CHAT_DATABASE_THREADS", 0)) or 1


@contextlib.contextmanager
def posts_held_back(stack, owner_db, monitor_db, members: dict[str, tuple[str, str]]):
    """Sockets (name -> (room, author)) on the first process, whose posts wait together while
    the block runs, in the lock's transaction on ``owner_db``; stored when it ends."""
    wait_for_metrics(stack)
    lock_room = f"t-lock-{uuid.uuid4().hex[:8]}"
    ChatHttp(stack.app_url).ensure_room(lock_room)
    calls = calls_at_once(stack)
    pid = stack.daphne_pids()[0]
    with served_by(stack, pid):
        fillers = [ChatSocket(stack.app_url, lock_room, f"filler{n}") for n in range(calls)]
        sockets = {name: ChatSocket(stack.app_url, room, author) for name, (room, author) in members.items()}
    with owner_db.transaction():
        owner_db.execute("SELECT 1 FROM chat_room WHERE slug = %s FOR UPDATE", [lock_room])
        # One after the other: a call takes every post waiting when it starts, so fillers
        # sent at once could share one.
        for n, filler in enumerate(fillers, start=1):
            filler.send({"type": "message", "text": "behind the lock", "client_id": f"filler-{n}"})
            deadline = time.monotonic() + LOCK_SHOWS_WITHIN_S
            while (stuck := inserts_waiting_for_a_lock(monitor_db)) < n and time.monotonic() < deadline:
                time.sleep(0.02)
            assert stuck == n, f"{stuck} of {n} database calls wait for the lock"
        yield HeldPosts(stack, pid, sockets)
    for filler in fillers:
        assert [frame["type"] for frame in answers(filler, 1)] == ["ack"]
        filler.close()


def inserts_waiting_for_a_lock(monitor_db) -> int:
    return monitor_db.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = %s AND usename = %s AND wait_event_type = 'Lock'",
        [APP_DATABASE, APP_ROLE],
    ).fetchone()[0]
