"""The shared client (probes/chat.py) against the real Daphne: no wait outlives its deadline."""

import time

import pytest
import websocket

from native.profiles import SHIPPED
from probes.chat import ChatSocket

DEADLINE_S = 4.0


@pytest.fixture(scope="module")
def pinging_app(stack):
    """The app with Daphne pinging every idle WebSocket every second (20 s by default)."""
    stack.restart_app(SHIPPED, {"APP_PING_INTERVAL": "1"})
    try:
        yield stack.app_url
    finally:
        stack.restart_app(SHIPPED)


def test_a_reply_that_never_comes_ends_at_the_deadline_however_often_daphne_pings(pinging_app, room):
    # Each ping is a frame: read with only a socket timeout, every one of them would
    # start the wait over, and this wait would never end.
    socket = ChatSocket(pinging_app, room, "waiting", timeout=DEADLINE_S)
    started = time.monotonic()
    with pytest.raises(websocket.WebSocketTimeoutException):
        socket.receive_until("message")  # alone in the room: nothing comes but pings
    waited = time.monotonic() - started
    socket.close()
    assert socket.seen["pings"] >= 2, "Daphne did not ping during the wait: the test proves nothing"
    assert DEADLINE_S <= waited < DEADLINE_S + 1.0


def test_a_wait_that_is_answered_returns_before_its_deadline(pinging_app, room):
    socket = ChatSocket(pinging_app, room, "answered", timeout=DEADLINE_S)
    time.sleep(2.5)  # a ping or two now wait ahead of the ack
    assert socket.post("after a ping", "p-1")["type"] == "ack"
    socket.close()
    assert socket.seen["pings"] >= 1
