"""One chat member's WebSocket under gevent, for the Locust users.

A reader greenlet owns the receiving side: it matches each ``ack`` (or error
frame) to the message that asked for it, counts broadcasts, and notices when the
server drops the connection. The user's greenlet only sends and waits, so a
broadcast arriving between two of its messages never blocks it or gets mistaken
for an answer.

Nothing here reports to Locust: callers time the calls and fire request events,
so a user that is being stopped (its greenlet killed) reports nothing spurious.
"""

import contextlib
import json
import time
from collections import Counter

import gevent
import websocket
from gevent.event import AsyncResult, Event

from probes.chat import close_code, receive_frame, socket_url

# Per-process tallies the Locust hooks forward to the master (report_to_master).
COUNTERS: Counter = Counter()


class SocketFailure(Exception):
    """A connect or message that did not succeed; str() is what Locust shows as the error."""


class ErrorFrame(SocketFailure):
    """The server answered with {"type": "error"}: the failure carries its code."""

    def __init__(self, frame: dict):
        self.code = frame.get("code", "unknown")
        self.message = frame.get("message", "")
        # Only the code: Locust groups failures by this text, and messages carry
        # per-room details that would split one cause into many rows.
        super().__init__(f"error frame: {self.code}")


class RoomSocket:
    def __init__(self, base_url: str, room: str, name: str):
        self.url, self.origin = socket_url(base_url, room, name)
        self.ws: websocket.WebSocket | None = None
        self.reader: gevent.Greenlet | None = None
        self.closed = Event()
        self.close_reason = ""
        self.connected_at = 0.0
        self._pending: dict[str, AsyncResult] = {}
        self._given_up: set[str] = set()  # client_ids whose ack came too late to count
        self._unsolicited_errors: list[dict] = []

    # --- connecting ------------------------------------------------------------------

    def connect(self, timeout: float) -> dict:
        """Handshake and wait for the server's ``ready`` frame; return it."""
        deadline = time.monotonic() + timeout
        try:
            self.ws = websocket.create_connection(self.url, timeout=timeout, origin=self.origin)
            opcode, data = receive_frame(self.ws, deadline)
        except (OSError, websocket.WebSocketException) as error:
            self._abandon()
            raise SocketFailure(f"{type(error).__name__}: {error}") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self._abandon()
            raise SocketFailure(f"closed before ready (code {close_code(data)})")
        frame = json.loads(data)
        if frame.get("type") != "ready":
            self._abandon()
            if frame.get("type") == "error":
                raise ErrorFrame(frame)
            raise SocketFailure(f"expected a ready frame, got {frame.get('type')!r}")
        self.ws.settimeout(None)  # from now on the reader waits as long as the socket lives
        self.connected_at = time.monotonic()
        self.reader = gevent.spawn(self._read)
        return frame

    @property
    def alive(self) -> bool:
        return self.ws is not None and not self.closed.is_set()

    def close(self) -> None:
        """Close from our side (the user stops); the reader ends with the socket."""
        self.close_reason = self.close_reason or "closed by the client"
        # The reader goes first: two greenlets must never wait on one socket.
        if self.reader is not None:
            self.reader.kill(block=True, timeout=1)
        if self.ws is not None and self.ws.connected:
            with contextlib.suppress(OSError, websocket.WebSocketException):
                self.ws.send_close()  # tell the server, without waiting for its answer
        self._abandon()

    def _abandon(self) -> None:
        if self.ws is not None:
            self.ws.shutdown()
        self.closed.set()
        for pending in self._pending.values():
            pending.set_exception(SocketFailure(f"connection lost while waiting ({self.close_reason})"))
        self._pending.clear()

    # --- messages --------------------------------------------------------------------

    def post(self, text: str, client_id: str, timeout: float) -> dict:
        """Send a message; return its ack once the server has committed it."""
        if not self.alive:
            raise SocketFailure(f"not connected ({self.close_reason})")
        answer = AsyncResult()
        self._pending[client_id] = answer
        try:
            self.ws.send(json.dumps({"type": "message", "text": text, "client_id": client_id}))
            ack = answer.get(timeout=timeout)
            # Counted here, where the caller gets it, not where the reader greenlet took it:
            # a user stopped while it waited (Locust's stop-timeout 0) reports no request,
            # and must count no ack either, or acks and messages would differ by the users
            # stopped at that moment. Nothing yields between here and the caller's report.
            COUNTERS["acks_matched"] += 1
            return ack
        except gevent.Timeout:
            COUNTERS["ack_timeouts"] += 1
            self._given_up.add(client_id)
            raise SocketFailure(f"no ack within {timeout:g}s") from None
        except (OSError, websocket.WebSocketException) as error:
            raise SocketFailure(f"send failed: {type(error).__name__}: {error}") from None
        finally:
            self._pending.pop(client_id, None)

    def take_unsolicited_errors(self) -> list[dict]:
        """Error frames that answered nothing we were waiting for (reported by the caller)."""
        errors, self._unsolicited_errors = self._unsolicited_errors, []
        return errors

    def _read(self) -> None:
        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    self.close_reason = f"server closed the connection (code {close_code(data)})"
                    return
                self._dispatch(json.loads(data))
        except (OSError, websocket.WebSocketException, ValueError) as error:
            self.close_reason = self.close_reason or f"{type(error).__name__}: {error}"
        finally:
            self._abandon()

    def _dispatch(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "message":
            COUNTERS["broadcasts_received"] += 1
        elif kind == "ack":
            client_id = frame.get("client_id", "")
            pending = self._pending.pop(client_id, None)
            if pending is None and client_id in self._given_up:
                self._given_up.discard(client_id)
                COUNTERS["acks_late"] += 1  # already failed as "no ack within ..."
            elif pending is None:
                COUNTERS["acks_unmatched"] += 1  # an ack for nothing we sent, or sent twice
            else:
                pending.set(frame)
        elif kind == "error":
            COUNTERS["error_frames"] += 1
            # Every error about a message names its client_id (rate_limited included).
            pending = self._pending.pop(frame.get("client_id", ""), None)
            if pending is None:
                self._unsolicited_errors.append(frame)
            else:
                pending.set_exception(ErrorFrame(frame))
