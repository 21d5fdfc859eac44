"""A small synchronous client for the chat's HTTP API and WebSocket protocol.

Used by `make demo`'s end-to-end check, by the tests, by `make chaos`, and by
the Locust user (under gevent, whose monkey-patching makes these sockets
cooperative).

Every wait ends at a deadline. A socket timeout alone does not do that: each
ping the server sends (Daphne: every 20 s) is a frame, and websocket-client
answers it and reads on with a fresh timeout, so a reply that never comes would
be waited for forever. Here each read gets what is left of the deadline.
"""

import http.cookiejar
import json
import ssl
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import websocket


@dataclass
class HttpResult:
    status: int
    body: dict | str


class ChatHttp:
    """The JSON API, with the CSRF cookie handled as a browser would. ``ca_file``: the CA
    an https server's certificate must come from (default: the system's)."""

    def __init__(self, base_url: str, timeout: float = 10.0, *, ca_file: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.cookies = http.cookiejar.CookieJar()
        handlers: list = [urllib.request.HTTPCookieProcessor(self.cookies)]
        if ca_file:
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
        self.opener = urllib.request.build_opener(*handlers)

    def request(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None
    ) -> HttpResult:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        if method != "GET":
            request.add_header("X-CSRFToken", self.csrf_token())
            # As the page's fetch does: over https, Django's CSRF check wants the origin.
            request.add_header("Referer", self.base_url + "/")
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return HttpResult(response.status, _decode(response.read()))
        except urllib.error.HTTPError as error:
            return HttpResult(error.code, _decode(error.read()))

    def csrf_token(self) -> str:
        for cookie in self.cookies:
            if cookie.name == "csrftoken":
                return cookie.value
        self.request("GET", "/")  # the page sets the cookie
        return next(cookie.value for cookie in self.cookies if cookie.name == "csrftoken")

    def ensure_room(self, slug: str, title: str = "") -> None:
        result = self.request("POST", "/api/rooms", {"slug": slug, "title": title or slug})
        if result.status not in (201, 409):
            raise RuntimeError(f"creating room {slug!r}: HTTP {result.status} {result.body}")


def _decode(raw: bytes) -> dict | str:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def socket_url(base_url: str, room: str, name: str) -> tuple[str, str]:
    """The room's ws:// URL and the Origin a browser on base_url would send."""
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return (
        f"{scheme}://{parts.netloc}/ws/rooms/{room}/?name={quote(name)}",
        f"{parts.scheme}://{parts.netloc}",
    )


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it carries none)."""
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


class SocketClosed(websocket.WebSocketConnectionClosedException):
    """The server closed the connection; ``code`` is its close code (None: none given)."""

    def __init__(self, code: int | None):
        super().__init__(f"the server closed the connection (code {code})")
        self.code = code


def receive_frame(ws: websocket.WebSocket, deadline: float, seen: Counter | None = None) -> tuple[int, bytes]:
    """The next data or close frame as (opcode, payload), by the deadline (time.monotonic()).

    Pings are answered (by websocket-client), counted in ``seen["pings"]``, and
    neither answer the wait nor extend it. Raises WebSocketTimeoutException at the
    deadline. (Each read gets the time left; a server that trickled one frame in
    pieces could still stretch that read, which Daphne does not do.)
    """
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise websocket.WebSocketTimeoutException("deadline reached while waiting for a frame")
        ws.settimeout(remaining)
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_PING and seen is not None:
            seen["pings"] += 1
        if opcode not in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            return opcode, frame.data


class ChatSocket:
    """One member of a room: connect, post, read frames; no wait lasts longer than ``timeout``."""

    def __init__(self, base_url: str, room: str, name: str, timeout: float = 10.0, **options):
        url, origin = socket_url(base_url, room, name)
        self.timeout = timeout
        self.seen: Counter = Counter()  # control frames read while waiting ("pings")
        self.closing = False  # the server said it is restarting: send nothing more here
        deadline = time.monotonic() + timeout
        self.ws = websocket.create_connection(
            url, timeout=timeout, origin=options.pop("origin", origin), **options
        )
        self.ready = self.receive(deadline)

    def send(self, frame: dict | str) -> None:
        self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    def receive(self, deadline: float | None = None) -> dict:
        """The next frame, by the deadline (default: ``timeout`` from now).

        Raises SocketClosed when the server closes instead, and
        WebSocketTimeoutException when nothing came in time.
        """
        deadline = deadline if deadline is not None else time.monotonic() + self.timeout
        opcode, payload = receive_frame(self.ws, deadline, self.seen)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise SocketClosed(close_code(payload))
        frame = json.loads(payload)
        if frame.get("type") == "closing":
            self.closing = True
        return frame

    def receive_until(self, frame_type: str) -> dict:
        """The next frame of this type within ``timeout``, skipping others (e.g. broadcasts)."""
        deadline = time.monotonic() + self.timeout
        while True:
            frame = self.receive(deadline)
            if frame["type"] == frame_type:
                return frame

    def post(self, text: str, client_id: str) -> dict:
        """Send a message and return its acknowledgement (or error) frame within ``timeout``.

        Broadcasts are skipped, however many: in a busy room a member that reads
        slower than the others post has any number of them queued ahead of its ack.
        """
        self.send({"type": "message", "text": text, "client_id": client_id})
        deadline = time.monotonic() + self.timeout
        while True:
            frame = self.receive(deadline)
            if frame["type"] in ("ack", "error") and frame.get("client_id") == client_id:
                return frame

    def close_code(self) -> int | None:
        """Wait (within ``timeout``) for the server's close frame and return its code."""
        deadline = time.monotonic() + self.timeout
        while True:
            opcode, payload = receive_frame(self.ws, deadline, self.seen)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return close_code(payload)

    def close(self) -> None:
        self.ws.close()
