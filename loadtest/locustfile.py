"""Chat users for Locust: `locust --config loadtest/locust.conf` (web UI), add --headless to run unattended.

One user class, two modes (--mode):
  chat      what a person in the browser does: load the page (csrftoken cookie),
            join-or-create the room, read its history over HTTP, open the room's
            WebSocket, post a message every --pace seconds (±50%) and wait for its
            ack, receive every member's broadcasts, reload the history over HTTP
            every --history-every seconds, and reconnect with backoff when dropped.
            This is the proof's scenario: its HTTP requests are what leak
            connections under Daphne with CONN_MAX_AGE>0.
  saturate  WebSocket only, closed loop: the next message right after the ack.
            Throughput for `make bench`. The server allows each socket CHAT_RATE_PER_S
            messages per second (20 by default) and answers rate_limited beyond, so
            have enough users that each stays under it, or cap them with --max-rate.

Users are grouped into rooms of --room-size members, so each message fans out to
a handful of sockets, as in a real chat. Every WebSocket connect and message round
trip is a Locust request (type WS) with its measured time; a missing, late or
wrong ack, an error frame (named by its code) and a dropped connection are
failures. See loadtest/locust_hooks.py for the monitor, summary and gate, and
loadtest/web_ui_connections.py for the web UI's Connections tab.
"""

import itertools
import os
import random
import sys
import time
import uuid
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from urllib.parse import urlsplit

# Locust puts this file's folder on sys.path; the modules import as `loadtest.*`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from locust import FastHttpUser, task

from loadtest import (
    locust_hooks,  # noqa: F401  (registers options, monitor, gate)
    web_ui_connections,  # noqa: F401  (the web UI's Connections tab)
)
from loadtest.room_socket import COUNTERS, ErrorFrame, RoomSocket, SocketFailure
from loadtest.scenario import raise_open_file_limit

# Each user holds a WebSocket and a keep-alive HTTP connection: 5,000 users need
# about 10,000 descriptors, more than Locust's own raise to 10,000 leaves room for.
raise_open_file_limit()

_user_numbers = itertools.count()
# Straight to Daphne in the TLS proxy's place (docker-compose.yml: x-behind-the-proxy):
# LOADTEST_FORWARDED_PROTO=https says so with X-Forwarded-Proto, as nginx does, so an
# app with DJANGO_HTTPS=true answers instead of redirecting to https; its cookies are
# then Secure, and go back over this plain hop as a browser's go back over TLS.
FORWARDED_PROTO = os.environ.get("LOADTEST_FORWARDED_PROTO", "")
RUN_TAG = uuid.uuid4().hex[:6]  # keeps client_ids unique across runs in the same rooms


class Backoff:
    """Exponential backoff with full jitter, so dropped users do not come back in one wave."""

    def __init__(self, first: float, cap: float):
        self.first, self.cap, self.attempts = first, cap, 0

    def next_delay(self) -> float:
        delay = random.uniform(0, min(self.cap, self.first * 2**self.attempts))  # noqa: S311
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class ChatUser(FastHttpUser):
    # Bounded waits everywhere: a stuck server shows up as failures, not a hung run.
    network_timeout = 10.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.options = self.environment.parsed_options
        worker = getattr(self.environment.runner, "worker_index", 0)
        number = next(_user_numbers)
        self.room = f"{self.options.room_prefix}-{worker}-{number // self.options.room_size}"
        self.member = f"u{worker}-{number}"
        self.socket: RoomSocket | None = None
        self.room_created = False
        self.backoff = Backoff(first=0.5, cap=self.options.reconnect_max)
        self.sent = 0
        self.last_sent = time.perf_counter()
        self.chatting = self.options.mode == "chat"
        self.headers = {"X-Forwarded-Proto": FORWARDED_PROTO} if FORWARDED_PROTO else {}
        if FORWARDED_PROTO:
            self.client.cookiejar.set_policy(DefaultCookiePolicy(secure_protocols=("http", "https")))
        # A POST names the page it came from, as the browser's does: on https, Django's
        # CSRF check requires a Referer (or Origin) of the same origin.
        target = urlsplit(self.host)
        self.referer = f"{FORWARDED_PROTO or target.scheme}://{target.netloc}/"
        if self.chatting:
            self.open_page()
            self.next_history = time.monotonic() + self._jittered(self.options.history_every)
        self.join()
        # Chat users start at a random point of their pace, so they do not send in step.
        pace = self.options.pace if self.chatting else 0.0
        self.next_send = time.monotonic() + random.uniform(0, pace)  # noqa: S311

    def on_stop(self) -> None:
        if self.socket is not None:
            self.socket.close()

    def wait_time(self) -> float:
        return max(0.0, self.next_send - time.monotonic())

    @task
    def chat(self) -> None:
        if self.socket is None or not self.socket.alive:
            self.rejoin()
            return
        self.report_unsolicited_errors()
        self.post_message()
        if self.chatting:
            self.next_send = time.monotonic() + self._jittered(self.options.pace)
            if self.options.history_every > 0 and time.monotonic() >= self.next_history:
                self.load_history()
                self.next_history = time.monotonic() + self._jittered(self.options.history_every)
        elif self.options.max_rate > 0:
            since_sent = time.perf_counter() - self.last_sent
            self.next_send = time.monotonic() + max(0.0, 1 / self.options.max_rate - since_sent)
        else:
            self.next_send = time.monotonic()

    # --- HTTP: what the page does ------------------------------------------------------

    def open_page(self) -> None:
        with self.client.get("/", name="/", headers=self.headers, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif not self._csrf_token():
                response.failure("no csrftoken cookie")
            else:
                response.success()
        self.ensure_room()
        self.load_history()

    def ensure_room(self) -> None:
        """Join-or-create, as the page's "create" button does: 201 and 409 are both fine."""
        self.room_created = True
        if not self._csrf_token():
            self.client.get("/", name="/", headers=self.headers)  # saturate mode starts here: cookie first
        with self.client.post(
            "/api/rooms",
            json={"slug": self.room, "title": f"Load {self.room}"},
            headers={**self.headers, "X-CSRFToken": self._csrf_token() or "", "Referer": self.referer},
            name="/api/rooms",
            catch_response=True,
        ) as response:
            if response.status_code in (201, 409):
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}: {_error_code(response)}")

    def load_history(self) -> None:
        with self.client.get(
            f"/api/rooms/{self.room}/messages?limit=20",
            name="/api/rooms/[room]/messages",
            headers=self.headers,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {_error_code(response)}")
            elif "messages" not in _json(response):
                response.failure("no messages in the answer")
            else:
                response.success()

    def _csrf_token(self) -> str | None:
        return next((c.value for c in self.client.cookiejar if c.name == "csrftoken"), None)

    # --- WebSocket ----------------------------------------------------------------------

    def join(self) -> bool:
        """Open the room's socket and wait for ready; one "WS connect" request."""
        socket = RoomSocket(self.host, self.room, self.member)
        started = time.perf_counter()
        try:
            socket.connect(timeout=self.options.connect_timeout)
        except ErrorFrame as failure:
            if failure.code == "room_not_found" and not self.room_created:
                # A saturating user makes no HTTP request of its own; in a room nobody
                # prepared (bench prepares them) it creates the room once, as the page's
                # "create" button does, and joins again. The test's own set-up is not a
                # failure of the server.
                self.ensure_room()
                return self.join()
            self._report("connect", started, failure)
            return False
        except SocketFailure as failure:
            self._report("connect", started, failure)
            return False
        self._report("connect", started)
        self.socket = socket
        return True

    def rejoin(self) -> None:
        if self.socket is not None:
            # The server dropped us (we never close while running): a failure, timed by
            # how long the connection had lived.
            lived = time.perf_counter() - (time.monotonic() - self.socket.connected_at)
            self._report("dropped", lived, SocketFailure(self.socket.close_reason))
            self.socket.close()
            self.socket = None
            COUNTERS["reconnects"] += 1
        gevent.sleep(self.backoff.next_delay())
        self.join()

    def post_message(self) -> None:
        self.sent += 1
        client_id = f"{self.member}-{RUN_TAG}-{self.sent}"
        text = f"message {self.sent} from {self.member}"
        started = self.last_sent = time.perf_counter()
        try:
            ack = self.socket.post(text, client_id, timeout=self.options.ack_timeout)
        except SocketFailure as failure:
            self._report("message", started, failure)
            return
        if not isinstance(ack.get("id"), int) or ack.get("client_id") != client_id:
            self._report("message", started, SocketFailure(f"wrong ack {ack}"))
            return
        self._report("message", started, length=len(text))
        self.backoff.reset()

    def report_unsolicited_errors(self) -> None:
        # An error frame that answered nothing in flight (it came after its message timed
        # out): timed from the last message sent, the request it most likely answers.
        for frame in self.socket.take_unsolicited_errors():
            self._report("error frame", self.last_sent, ErrorFrame(frame))

    def _report(self, name: str, started: float, failure: Exception | None = None, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=failure,
            context={},
        )

    @staticmethod
    def _jittered(seconds: float) -> float:
        return seconds * random.uniform(0.5, 1.5)  # noqa: S311


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(response) -> str:
    return str(_json(response).get("code", "no JSON error"))
