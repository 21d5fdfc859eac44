"""Posting messages: every socket's posts of one Daphne process, stored a batch per database call.

A post waits while the database call before it runs; when that call ends, everything
that came meanwhile (up to CHAT_POST_BATCH_MAX) goes in the next one: one thread hop,
one connection from the pool, one INSERT and one commit for the lot (chat/store.py,
add_messages). Alone on the server, a post goes at once, in a batch of one; under load
batches grow with the queue, and what the queue costs per message shrinks as it grows.
It is group commit, as databases do it for their log.

What a post gets back does not change: its own row, or that it was there already, or
its own error (PostingForbidden), and an exception when the call fails as a whole
(every post of that batch gets it: none was acknowledged). Each post is answered
only after the commit of its batch. A socket never has two posts waiting (the
consumer awaits each before it reads the next frame), so a socket's messages are
stored in the order sent. Up to CHAT_DATABASE_THREADS calls run at once when that is
set (each on a thread of its own), one otherwise (Channels' one database thread).
"""

import asyncio
import weakref
from collections import deque
from collections.abc import Callable

from django.conf import settings

from chat import store
from chat.database import THREADS, database_call
from chat.metrics import POST_BATCH_SIZE, POSTS_WAITING

_store_batch = database_call(
    store.add_messages_checked if settings.CHAT_MESSAGE_CHECKS else store.add_messages
)


class PostBatcher:
    """The posts waiting for a database call in one event loop, and the calls under way."""

    def __init__(self, store_batch: Callable, max_batch: int, calls_at_once: int):
        self.store_batch, self.max_batch, self.calls_at_once = store_batch, max_batch, calls_at_once
        self.waiting: deque[tuple[store.Post, asyncio.Future]] = deque()
        self.calls = 0
        # Referenced here while they run: the loop keeps only weak references to tasks.
        self.tasks: set[asyncio.Task] = set()

    async def post(self, post: store.Post) -> tuple:
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((post, future))
        POSTS_WAITING.inc()
        if self.calls < self.calls_at_once:
            self.calls += 1
            task = asyncio.ensure_future(self._store_while_waiting())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _store_while_waiting(self) -> None:
        try:
            while self.waiting:
                batch = [self.waiting.popleft() for _ in range(min(self.max_batch, len(self.waiting)))]
                POSTS_WAITING.dec(len(batch))
                POST_BATCH_SIZE.observe(len(batch))
                try:
                    outcomes = await self.store_batch([post for post, _ in batch])
                except Exception as error:  # the call as a whole: no post of it was stored
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():  # its consumer was cancelled (the socket's process stopping)
                        future.set_result(outcome)
        finally:
            # In the same step as the last look at the queue: a post that comes after it
            # finds this call gone and starts another (a done callback would run too late).
            self.calls -= 1


_batchers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


async def add_message(room_id: int, author: str, text: str, client_id: str) -> tuple:
    """Store one message with the others of its batch: (the message, whether it was there already)."""
    loop = asyncio.get_running_loop()
    batcher = _batchers.get(loop)
    if batcher is None:  # one per event loop: Daphne runs one; tests may run several in turn
        batcher = _batchers[loop] = PostBatcher(_store_batch, settings.CHAT_POST_BATCH_MAX, max(THREADS, 1))
    return await batcher.post(store.Post(room_id, author, text, client_id))
