"""The channel layer (app/chat/layer.py) in this process, against the stack's real Redis over TLS.

Broadcasts that wait at once go to Redis in one round trip; each is still delivered
exactly once, each sender's in the order sent, and each caller gets its own outcome.
What Redis delivered is read by a plain redis-py subscriber, independent of the layer,
and the round trips are the layer's chat_publish_batch_size histogram (one observation
per round trip, summing the PUBLISHes it carried).
"""

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY
from redis import asyncio as aioredis
from redis.exceptions import NoPermissionError

SENDERS = 20
EACH = 10
RECEIVED_WITHIN_S = 5.0


@pytest.fixture
def layer(django_app):
    from channels.layers import get_channel_layer

    from chat.layer import CoalescingPubSubChannelLayer

    layer = get_channel_layer()
    assert isinstance(layer, CoalescingPubSubChannelLayer)  # what the app's settings name
    return layer


def round_trips() -> tuple[float, float]:
    """(round trips to Redis, PUBLISHes they carried) by the layer in this process so far."""
    return (
        REGISTRY.get_sample_value("chat_publish_batch_size_count") or 0.0,
        REGISTRY.get_sample_value("chat_publish_batch_size_sum") or 0.0,
    )


async def subscribed(django_app, group: str):
    """A pub/sub connection of its own to the group's Redis channel, once Redis confirmed it."""
    host = dict(django_app.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0])
    client = aioredis.Redis.from_url(host.pop("address"), **host)
    pubsub = client.pubsub()
    # channels_redis' name for a group's channel: its prefix ("asgi"), then "__group__".
    await pubsub.subscribe(f"asgi__group__{group}")
    confirmation = await pubsub.get_message(timeout=RECEIVED_WITHIN_S)
    assert confirmation is not None and confirmation["type"] == "subscribe", confirmation
    return client, pubsub


async def received_until(layer, pubsub, marker: dict) -> list[dict]:
    """Every message the subscriber gets, up to (not with) ``marker``."""
    received = []
    while True:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=RECEIVED_WITHIN_S)
        assert message is not None, f"nothing more within {RECEIVED_WITHIN_S:g}s after {len(received)}"
        event = layer.deserialize(message["data"])
        if event == marker:
            return received
        received.append(event)


def test_broadcasts_sent_at_once_share_round_trips_and_arrive_once_in_order(layer, django_app):
    group = f"t-layer-{uuid.uuid4().hex[:8]}"
    marker = {"type": "chat.marker"}

    async def scenario():
        client, pubsub = await subscribed(django_app, group)

        async def sender(n: int):  # as a consumer does: each group_send awaited before the next
            for seq in range(EACH):
                await layer.group_send(group, {"type": "chat.test", "sender": n, "seq": seq})

        before = round_trips()
        await asyncio.gather(*(sender(n) for n in range(SENDERS)))
        after = round_trips()
        # Every PUBLISH was answered before its group_send returned, and Redis delivers
        # in the order it publishes: whatever the senders' PUBLISHes brought comes first.
        await layer.group_send(group, marker)
        received = await received_until(layer, pubsub, marker)
        await client.aclose()
        return before, after, received

    before, after, received = asyncio.run(scenario())
    assert len(received) == SENDERS * EACH  # with the orders below: each exactly once
    for n in range(SENDERS):
        assert [event["seq"] for event in received if event["sender"] == n] == list(range(EACH))
    trips, published = after[0] - before[0], after[1] - before[1]
    assert published == SENDERS * EACH
    # The senders' first messages wait together for the first round trip; each round
    # trip then answers every sender at once, and all of them send their next message
    # while the next one is started: each round trip carries one message per sender.
    assert trips == EACH


def test_a_publish_redis_refuses_fails_alone_in_its_round_trip(layer, django_app):
    """The chat user may publish only to channels named asgi* (redis/chat.acl): a send to
    another channel is refused, in the same round trip as broadcasts that go through."""
    group = f"t-layer-{uuid.uuid4().hex[:8]}"
    marker = {"type": "chat.marker"}

    async def scenario():
        client, pubsub = await subscribed(django_app, group)
        before = round_trips()
        outcomes = await asyncio.gather(
            layer.group_send(group, {"type": "chat.test", "seq": 0}),
            layer.send("not-the-chat-prefix", {"type": "chat.test"}),
            layer.group_send(group, {"type": "chat.test", "seq": 1}),
            return_exceptions=True,
        )
        after = round_trips()
        await layer.group_send(group, marker)
        received = await received_until(layer, pubsub, marker)
        await client.aclose()
        return before, after, outcomes, received

    before, after, outcomes, received = asyncio.run(scenario())
    assert (after[0] - before[0], after[1] - before[1]) == (1, 3)  # one round trip for the three
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], NoPermissionError), outcomes[1]
    assert [event["seq"] for event in received] == [0, 1]
