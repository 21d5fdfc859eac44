"""The channel layer: channels_redis' pub/sub layer, sending the broadcasts that wait together.

channels_redis' pub/sub layer sends each PUBLISH on its own: one round trip to Redis at
a time per shard, under the shard's lock (RedisSingleShardConnection.publish), each
through asyncio's TLS. When a batch of posts commits (chat/posting.py), each of its
consumers acks and broadcasts at once, so they queued for that lock, a round trip each:
`make profile` found that path the largest item in Daphne's samples (about a fifth).

Here a shard sends every publish that waits in one round trip: a redis-py pipeline
(transaction=False: PUBLISH after PUBLISH in one write, no MULTI), the replies read
together. It is group commit, as posting.py does for the database: a publish alone
goes at once; those that come while a round trip is under way go together in the next.
Each caller still returns only once its own PUBLISH was answered, and gets its own
error: Redis refusing that PUBLISH, or the round trip's (a lost connection) with every
other caller of it. At most once, as before. The queue is first in, first out, and a
consumer awaits each group_send before the next, so a socket's messages still reach
the members in the order sent. Subscribing, receiving and flushing are channels_redis'
own, under the same lock.

This reaches into the layer's internals as of channels_redis 4.3.0 (pinned in
app/requirements.txt): _get_layer builds the loop layer, which builds its shards; a
shard's _lock, _redis and _ensure_redis. tests/test_layer.py runs it against the real
Redis.
"""

import asyncio
from collections import deque

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close

from chat.metrics import PUBLISH_BATCH_SIZE


class CoalescingPubSubChannelLayer(RedisPubSubChannelLayer):
    """The backend settings name: RedisPubSubChannelLayer with CoalescingShardConnection shards."""

    def _get_layer(self):
        # channels_redis' own, but for the class: a layer per event loop, flushed when the loop closes.
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = CoalescingLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer


class CoalescingLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The same hosts; the shards replaced have not connected (they do on first use).
        self._shards = [CoalescingShardConnection(shard.host, self) for shard in self._shards]


class CoalescingShardConnection(RedisSingleShardConnection):
    def __init__(self, host, channel_layer):
        super().__init__(host, channel_layer)
        self._unsent: deque[tuple[str, bytes, asyncio.Future]] = deque()
        # Referenced here while it runs: the loop keeps only weak references to tasks.
        self._sender: asyncio.Task | None = None

    async def publish(self, channel, message):
        sent = asyncio.get_running_loop().create_future()
        self._unsent.append((channel, message, sent))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send_while_unsent())
        await sent

    async def _send_while_unsent(self):
        try:
            while self._unsent:
                async with self._lock:
                    # What came while the lock was awaited goes too. A caller cancelled
                    # before its turn publishes nothing, as one waiting for the lock did.
                    batch = [self._unsent.popleft() for _ in range(len(self._unsent))]
                    batch = [entry for entry in batch if not entry[2].done()]
                    if batch:
                        await self._send(batch)
        finally:
            # In the same step as the last look at the queue: a publish that comes after
            # it finds no sender and starts one.
            self._sender = None

    async def _send(self, batch: list[tuple[str, bytes, asyncio.Future]]) -> None:
        PUBLISH_BATCH_SIZE.observe(len(batch))
        self._ensure_redis()
        try:
            pipeline = self._redis.pipeline(transaction=False)
            for channel, message, _ in batch:
                pipeline.publish(channel, message)
            # A PUBLISH that Redis refuses is that caller's error only.
            replies = await pipeline.execute(raise_on_error=False)
        except Exception as error:  # the round trip as a whole: whether any was sent is unknown
            replies = [error] * len(batch)
        for (_, _, sent), reply in zip(batch, replies, strict=True):
            if sent.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                sent.set_exception(reply)
            else:
                sent.set_result(None)
