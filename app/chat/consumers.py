"""The room WebSocket: connect to a room, post messages, read history.

Database work goes through ``database_call`` (chat/database.py: Channels'
``database_sync_to_async``, on its one thread or on CHAT_DATABASE_THREADS), which
closes the connection (CONN_MAX_AGE=0: returns it to the pool) after every call,
so a socket that stays open for hours holds no database connection in between.
Posts are stored in batches, the posts of every socket of the process that came
while the call before ran (chat/posting.py).
"""

import asyncio
import json
import logging
import time

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from chat import posting, store
from chat.database import database_call
from chat.metrics import ERRORS, HANDSHAKES_REFUSED, MESSAGES_ACKNOWLEDGED, WEBSOCKETS_OPEN
from chat.protocol import CloseCode, HistoryRequest, ProtocolError, parse_author, parse_frame, peek_client_id

logger = logging.getLogger(__name__)

find_room = database_call(store.find_room)
latest_messages = database_call(store.latest_messages)

UNAVAILABLE = "the database is unavailable; try again later"
# The INSERT may have committed before the connection broke (PgBouncer or PostgreSQL
# restarted mid-statement), so the server cannot say it was not stored. A resend
# with the same client_id is safe: it is stored at most once.
UNAVAILABLE_MESSAGE = (
    "the database is unavailable; the message may not have been stored: send it again with the same client_id"
)
FORBIDDEN = "you may not post in this room; the message was not stored"

# An error names the client_id of a refused frame of up to this many times CHAT_MAX_FRAME_BYTES.
PEEK_FRAME_FACTOR = 8

CLOSING = "the server is restarting: it closes this connection shortly (1001); reconnect then"
GOING_AWAY = "the server is restarting: not stored; send it again with the same client_id after reconnecting"
# While draining, the socket is closed once the client has sent nothing for this long:
# a frame already on its way when the client learned of the restart still gets an answer.
QUIET_S = 0.5


def dumps(frame: dict) -> str:
    return json.dumps(frame, separators=(",", ":"))


class TokenBucket:
    """Allow ``rate`` frames per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = float(burst), time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class RoomConsumer(AsyncWebsocketConsumer):
    room = None
    group = None
    accepted = False  # counted in WEBSOCKETS_OPEN, until disconnect()
    draining = False
    closer: asyncio.Task | None = None

    async def connect(self):
        await self.accept()
        WEBSOCKETS_OPEN.inc()
        self.accepted = True
        try:
            self.author = parse_author(self.scope["query_string"])
        except ProtocolError as error:
            await self.refuse(error, CloseCode.BAD_REQUEST)
            return
        slug = self.scope["url_route"]["kwargs"]["slug"]
        try:
            self.room = await find_room(slug)
        except DatabaseError:
            logger.warning("room lookup failed for %s", slug, exc_info=True)
            await self.refuse(ProtocolError("unavailable", UNAVAILABLE), CloseCode.UNAVAILABLE)
            return
        if self.room is None:
            error = ProtocolError("room_not_found", f"no room {slug!r}; create it with POST /api/rooms")
            await self.refuse(error, CloseCode.ROOM_NOT_FOUND)
            return
        self.limiter = TokenBucket(settings.CHAT_RATE_PER_S, settings.CHAT_RATE_BURST)
        self.group = f"room-{self.room.id}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.send_frame({"type": "ready", "room": self.room.slug, "author": self.author})

    async def dispatch(self, message):
        """Channels' own, without the hop to the database thread it makes before every handler.

        Since Channels 4.2, AsyncConsumer.dispatch awaits aclose_old_connections() first:
        Django's close_old_connections on the process's one thread-sensitive thread, for
        every frame received and every broadcast to every member, in the queue behind
        the database calls of every socket. This consumer never touches the database on
        the event loop; each of its database calls closes its connection before and after
        itself (database_call: Channels' DatabaseSyncToAsync). The hop did nothing here but
        cost a thread round trip per event, and made a database call stuck behind a lock
        hold up every frame of the process (tests/test_post_batches.py).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code):
        if self.accepted:
            WEBSOCKETS_OPEN.dec()
        if self.closer is not None:
            self.closer.cancel()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def server_drain(self, event):
        """The process is stopping (chat_site/graceful_daphne.py).

        Queued behind every frame received so far, so each of those has been answered
        by now. The client is told; frames still on their way are answered with
        `going_away` (not stored: send again after reconnecting); once the client has
        been quiet for QUIET_S, the socket is closed with 1001, going away.
        """
        self.draining = True
        self.last_frame_at = time.monotonic()
        await self.send_frame({"type": "closing", "message": CLOSING})
        self.closer = asyncio.ensure_future(self._close_when_quiet())

    async def _close_when_quiet(self):
        while (quiet_for := self.last_frame_at + QUIET_S - time.monotonic()) > 0:
            await asyncio.sleep(quiet_for)
        await self.close(code=int(CloseCode.GOING_AWAY))

    async def receive(self, text_data=None, bytes_data=None):
        self.last_frame_at = time.monotonic()
        if self.room is None:  # refused in connect(); the close is on its way
            return
        try:
            frame = self.check(text_data, bytes_data)
            if isinstance(frame, HistoryRequest):
                await self.send_history(frame.limit)
            else:
                await self.post(frame.text, frame.client_id)
        except ProtocolError as error:
            await self.send_error(error)

    def check(self, text_data, bytes_data):
        """The valid frame, or ProtocolError naming the frame's client_id whenever it has one.

        The id is read only once a frame is refused (by size, rate or validation),
        so a frame that passes is parsed once; a refused frame is dropped either way.
        An oversized frame is parsed for its id up to PEEK_FRAME_FACTOR times the
        limit (64 KiB by default: at most a few ms of parsing), not up to Daphne's
        1 MiB, where a frame of small tokens costs ~50 ms of this event loop.
        """
        try:
            return self._check(text_data, bytes_data)
        except ProtocolError as error:
            error.client_id = peek_client_id(
                text_data if text_data is not None else bytes_data,
                max_length=PEEK_FRAME_FACTOR * settings.CHAT_MAX_FRAME_BYTES,
            )
            raise

    def _check(self, text_data, bytes_data):
        if self.draining:
            raise ProtocolError("going_away", GOING_AWAY)
        if text_data is None:
            raise ProtocolError("binary_not_supported", "send JSON in text frames")
        if len(text_data.encode()) > settings.CHAT_MAX_FRAME_BYTES:
            raise ProtocolError(
                "frame_too_large", f"frames are limited to {settings.CHAT_MAX_FRAME_BYTES} bytes"
            )
        if not self.limiter.allow():
            raise ProtocolError(
                "rate_limited", f"at most {settings.CHAT_RATE_PER_S:g} frames per second; slow down"
            )
        return parse_frame(
            text_data,
            max_text_chars=settings.CHAT_MAX_TEXT_CHARS,
            history_max=settings.CHAT_HISTORY_MAX,
        )

    async def post(self, text: str, client_id: str):
        try:
            message, duplicate = await posting.add_message(self.room.id, self.author, text, client_id)
        except store.PostingForbidden:
            raise ProtocolError("forbidden", FORBIDDEN, client_id) from None
        except DatabaseError:
            logger.warning("message insert failed in room %s", self.room.slug, exc_info=True)
            raise ProtocolError("unavailable", UNAVAILABLE_MESSAGE, client_id) from None
        ack = {"type": "ack", "id": message.id, "client_id": client_id}
        if duplicate:
            # A resend of a message stored before (its ack was lost, or it got `unavailable`):
            # answer with the original id and broadcast nothing; the members were sent it
            # when it was stored (and `history` has it).
            await self.send_frame({**ack, "duplicate": True})
            return
        # The row is committed: acknowledge, then tell every member (the sender too).
        # Counted first, as every metric here: a client that has the frame finds it counted.
        MESSAGES_ACKNOWLEDGED.inc()
        await self.send_frame(ack)
        # Serialized here, once: every member's consumer sends the same text as it is.
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "frame": dumps({"type": "message", **message.as_dict()})}
        )

    async def send_history(self, limit: int):
        try:
            messages = await latest_messages(self.room.id, limit)
        except DatabaseError:
            logger.warning("history failed in room %s", self.room.slug, exc_info=True)
            raise ProtocolError("unavailable", UNAVAILABLE) from None
        await self.send_frame({"type": "history", "messages": messages})

    async def chat_message(self, event):
        """A message broadcast to the room's group by any process."""
        await self.send_text(event["frame"])

    async def refuse(self, error: ProtocolError, code: int):
        HANDSHAKES_REFUSED.labels(reason=error.code).inc()
        await self.send_error(error)
        await self.close(code=int(code))  # Autobahn accepts a plain int only, not an IntEnum

    async def send_error(self, error: ProtocolError):
        ERRORS.labels(code=error.code).inc()
        await self.send_frame(error.frame())

    async def send_frame(self, frame: dict):
        await self.send_text(dumps(frame))

    async def send_text(self, text: str):
        """Send a frame; to a client that has just gone, nothing. Its websocket.disconnect is
        already queued behind this, and disconnect() must still run (the open-socket count,
        the group): an exception here would end the consumer without it. A broadcast meets
        a closing socket whenever a member leaves while its room is busy. Daphne raises
        autobahn's Disconnected; the ASGI spec asks other servers for an OSError."""
        try:
            await self.send(text_data=text)
        except (Disconnected, OSError):
            logger.debug("frame not sent: the client of %s is gone", self.channel_name)
