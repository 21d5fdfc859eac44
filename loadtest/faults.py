"""Faults under load, and the ledger that proves what survived them: `make chaos`'s machinery.

Chat clients (threads) post messages while one fault after another is injected
into the native stack; every acknowledged message is then looked up in
PostgreSQL. The library behind `python -m loadtest.chaos` and tests/test_faults.py.
"""

import itertools
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
import websocket

from loadtest.monitor import ConnectionMonitor, MonitorDsns
from native.layout import StackError
from native.services import app_ready
from native.stack import Stack
from probes.chat import ChatHttp, ChatSocket, SocketClosed
from probes.connections import connection_bound

RECOVERY_LIMIT_S = 30.0  # from a fault's end until a new client's message is acknowledged
REPLY_TIMEOUT_S = 20.0  # longer than any wait the stack may impose (query_wait_timeout 10 s)
PAUSE_S = 3.0


# Answers that keep a message in the outbox, to be sent again with its client_id.
RESEND = {"unavailable", "rate_limited", "going_away"}
DELIVERY_LIMIT_S = 30.0  # after the load stops, how long a client keeps resending its outbox


@dataclass
class Ledger:
    """What the clients sent and saw, shared by their threads.

    Every message a client creates is in ``sent`` (client_id -> room) at once, and
    stays in its outbox until acknowledged; ``acked`` is client_id -> the id the
    ack named (a duplicate ack names the first row's).
    """

    sent: dict[str, str] = field(default_factory=dict)
    acked: dict[str, int] = field(default_factory=dict)
    duplicate_acks: int = 0
    errors: Counter = field(default_factory=Counter)
    closes: Counter = field(default_factory=Counter)  # close code seen by clients -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client_id: str, room: str) -> None:
        with self.lock:
            self.sent[client_id] = room

    def ack(self, client_id: str, message_id: int, duplicate: bool) -> None:
        with self.lock:
            self.acked[client_id] = message_id
            self.duplicate_acks += duplicate

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1

    def closed(self, code: int | None) -> None:
        with self.lock:
            self.closes[str(code)] += 1


class Chatter(threading.Thread):
    """A room member who writes a message every ``pace`` seconds and keeps each one until
    it is acknowledged: after an error that asks for it, a dropped connection or a
    restart, it reconnects (backoff with full jitter) and sends it again with the same
    client_id. When ``stop`` is set it writes nothing new, and delivers what is left
    (for up to DELIVERY_LIMIT_S)."""

    def __init__(
        self,
        base_url: str,
        room: str,
        name: str,
        ledger: Ledger,
        stop: threading.Event,
        pace: float,
        socket_options: dict | None = None,
    ):
        super().__init__(name=name, daemon=True)
        self.base_url, self.room, self.ledger, self.stop, self.pace = base_url, room, ledger, stop, pace
        self.socket_options = socket_options or {}  # ChatSocket's, e.g. sslopt for a private CA
        self.outbox: dict[str, str] = {}  # client_id -> text, in the order written
        self.attempts = 0
        self.acknowledged = threading.Event()  # set at this chatter's first ack: it is writing

    def run(self) -> None:
        give_up_at = None
        while self.outbox or not self.stop.is_set():
            if self.stop.is_set():
                give_up_at = give_up_at or time.monotonic() + DELIVERY_LIMIT_S
                if time.monotonic() > give_up_at:
                    return  # what is left is counted as lost
            socket = self._connect()
            if socket is None:
                time.sleep(self._backoff())
                continue
            self.attempts = 0
            try:
                self._chat(socket)
            finally:
                socket.close()

    def _backoff(self) -> float:
        self.attempts += 1
        return random.uniform(0, min(2.0, 0.1 * 2**self.attempts))  # noqa: S311

    def _connect(self) -> ChatSocket | None:
        try:
            socket = ChatSocket(
                self.base_url, self.room, self.name, timeout=REPLY_TIMEOUT_S, **self.socket_options
            )
        except (OSError, websocket.WebSocketException):
            self.ledger.error("connect_refused")
            return None
        if socket.ready["type"] != "ready":  # e.g. "unavailable", then a close code
            self.ledger.error(f"connect:{socket.ready.get('code')}")
            self._wait_for_close(socket)
            return None
        return socket

    def _chat(self, socket: ChatSocket) -> None:
        """Deliver the outbox, then write and deliver a message every ``pace``, until the
        connection ends (or the outbox is empty once the load stops)."""
        while True:
            for client_id, text in list(self.outbox.items()):
                if not self._deliver(socket, client_id, text):
                    return
            if self.stop.is_set() or socket.closing:
                if socket.closing:
                    self._wait_for_close(socket)
                return
            if self.stop.wait(self.pace):
                continue
            client_id = uuid.uuid4().hex
            self.outbox[client_id] = f"chaos {client_id[:8]} from {self.name}"
            self.ledger.send(client_id, self.room)

    def _deliver(self, socket: ChatSocket, client_id: str, text: str) -> bool:
        """Send one message; False when this connection is done (closed, closing or hung)."""
        if socket.closing:
            self._wait_for_close(socket)
            return False
        try:
            reply = socket.post(text, client_id)
        except SocketClosed as closed:
            self.ledger.closed(closed.code)
            self.ledger.error("closed_with_ack_pending")  # kept, and sent again after reconnecting
            return False
        except websocket.WebSocketTimeoutException:
            self.ledger.error("timeout")  # no answer: the one outcome that must never happen
            return False
        except (OSError, websocket.WebSocketException):
            self.ledger.closed(1006)  # no close frame at all
            self.ledger.error("connection_dropped")
            return False
        if reply["type"] == "ack":
            self.ledger.ack(client_id, reply["id"], reply.get("duplicate", False))
            del self.outbox[client_id]
            self.acknowledged.set()
            return True
        self.ledger.error(reply["code"])
        if reply["code"] not in RESEND:
            del self.outbox[client_id]  # refused for good: counted, and never stored
        if reply["code"] == "going_away":
            self._wait_for_close(socket)
            return False
        if reply["code"] in RESEND:
            time.sleep(self._backoff())
        return True

    def _wait_for_close(self, socket: ChatSocket) -> None:
        """Read until the server closes (after `closing`, a `going_away`, or a refused connect)."""
        try:
            while True:
                socket.receive()
        except SocketClosed as closed:
            self.ledger.closed(closed.code)
        except websocket.WebSocketTimeoutException:
            self.ledger.error("timeout")
        except (OSError, websocket.WebSocketException):
            self.ledger.closed(1006)
            self.ledger.error("connection_dropped")


# --- faults ----------------------------------------------------------------------


def pause_pgbouncer(stack: Stack) -> None:
    admin = stack.dsn("pgbouncer_admin", through_pgbouncer=True, dbname="pgbouncer")
    with psycopg.connect(admin, autocommit=True) as console:
        console.execute("PAUSE chat")
        time.sleep(PAUSE_S)
        console.execute("RESUME chat")


def restart(service: str) -> Callable[[Stack], None]:
    return lambda stack: stack.restart(service)


def saturate_pool(stack: Stack) -> None:
    """Hold every server connection the pool may open in one transaction each, for ~12 s.

    Each statement stays under statement_timeout (5 s); the transaction outlasts
    query_wait_timeout (10 s), so queued clients get an error rather than a hang.
    """
    dsn = stack.dsn("chat_app", through_pgbouncer=True)

    def hold() -> None:
        try:
            with psycopg.connect(dsn) as conn:
                for _ in range(3):
                    conn.execute("SELECT pg_sleep(4)")
        except psycopg.Error:
            pass  # a holder that itself waited too long; the others still saturate

    holders = [threading.Thread(target=hold) for _ in range(connection_bound())]
    for holder in holders:
        holder.start()
    for holder in holders:
        holder.join(timeout=60)


def wait_for_daphnes(stack: Stack, count: int, gone: int) -> None:
    """Until supervisord runs ``count`` Daphne processes again, none of them ``gone``, and /healthz is 200."""
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while len(pids := stack.daphne_pids()) < count or gone in pids or not app_ready(stack):
        if time.monotonic() > deadline:
            raise StackError(
                f"supervisord did not replace Daphne process {gone} within {RECOVERY_LIMIT_S:g}s"
            )
        time.sleep(0.2)


def kill_daphne(stack: Stack) -> None:
    """SIGKILL one Daphne process: its sockets drop (1006); supervisord starts another."""
    workers = stack.daphne_pids()
    if not workers:
        raise StackError("no Daphne process to kill")
    stack.kill_worker(workers[0], signal.SIGKILL)
    wait_for_daphnes(stack, len(workers), workers[0])


def roll_daphnes(stack: Stack) -> None:
    """SIGTERM each Daphne process in turn, the next once its replacement serves: a rolling
    restart within the app. Each drains: answers what it received, closes with 1001."""
    workers = stack.daphne_pids()
    for worker in workers:
        stack.kill_worker(worker, signal.SIGTERM)
        wait_for_daphnes(stack, len(workers), worker)


FAULTS: dict[str, Callable[[Stack], None]] = {
    "pgbouncer-pause": pause_pgbouncer,
    "pgbouncer-restart": restart("pgbouncer"),
    "postgres-restart": restart("postgres"),
    "pool-saturated": saturate_pool,
    "daphne-killed": kill_daphne,
    "daphne-rolling-restart": roll_daphnes,
    # SIGTERM to the app: every Daphne process drains at once, then the app starts again.
    "app-graceful-restart": restart("app"),
}


# --- the run ---------------------------------------------------------------------


class PeakWatcher(threading.Thread):
    """Samples the app role's server connections twice a second; keeps the peak."""

    def __init__(self, stack: Stack, stop: threading.Event):
        super().__init__(daemon=True)
        self.monitor = ConnectionMonitor(MonitorDsns.from_env(stack.monitor_env()))
        self.stop, self.peak = stop, 0

    def run(self) -> None:
        while not self.stop.wait(0.5):
            count = self.monitor.sample()["app_server_connections"]
            self.peak = max(self.peak, count or 0)
        self.monitor.close()


def message_acknowledged(base_url: str, room: str, **socket_options) -> bool:
    """Whether a new client, connecting now, has a message acknowledged: the probe every
    recovery time here (and in the swarm tests) is measured with."""
    try:
        socket = ChatSocket(base_url, room, "probe", timeout=REPLY_TIMEOUT_S, **socket_options)
        try:
            return socket.ready["type"] == "ready" and socket.post("probe", uuid.uuid4().hex)["type"] == "ack"
        finally:
            socket.close()
    except (OSError, websocket.WebSocketException, ValueError):
        return False


def recovery_seconds(stack: Stack, room: str, since: float) -> float:
    """Seconds from `since` (the fault's end) until a new client's message is acknowledged."""
    deadline = since + RECOVERY_LIMIT_S * 2
    while time.monotonic() < deadline:
        if message_acknowledged(stack.app_url, room):
            return round(time.monotonic() - since, 2)
        time.sleep(0.2)
    return float("inf")


def run(stack: Stack, faults: list[str], clients: int = 30, pace: float = 0.2, settle_s: float = 3.0) -> dict:
    """Run the clients, inject each fault in turn, and account for every message written."""
    http = ChatHttp(stack.app_url)
    rooms = [f"chaos-{uuid.uuid4().hex[:8]}-{n}" for n in range(max(1, clients // 5))]
    for room in rooms:
        http.ensure_room(room)
    ledger, stop = Ledger(), threading.Event()
    watcher = PeakWatcher(stack, stop)
    chatters = [
        Chatter(stack.app_url, room, f"chatter{n}", ledger, stop, pace)
        for n, room in zip(range(clients), itertools.cycle(rooms), strict=False)
    ]
    started = time.monotonic()
    watcher.start()
    for chatter in chatters:
        chatter.start()
    per_fault = []
    try:
        time.sleep(settle_s)
        for name in faults:
            with ledger.lock:
                errors_before, closes_before = Counter(ledger.errors), Counter(ledger.closes)
            print(f"  injecting {name} ...", flush=True)
            injected = time.monotonic()
            FAULTS[name](stack)
            ended = time.monotonic()
            recovered = recovery_seconds(stack, rooms[0], ended)
            time.sleep(settle_s)  # load keeps running on the recovered stack
            with ledger.lock:
                errors, closes = ledger.errors - errors_before, ledger.closes - closes_before
            per_fault.append(
                {
                    "fault": name,
                    "fault_s": round(ended - injected, 2),
                    "recovery_s": recovered,
                    "errors": sum(errors.values()),
                    "errors_by_kind": dict(sorted(errors.items())),
                    "close_codes": dict(sorted(closes.items())),
                }
            )
            print(f"    lasted {ended - injected:.1f} s; serving again {recovered:g} s later", flush=True)
    finally:
        stop.set()  # clients write nothing new and deliver what they hold
        for thread in [*chatters, watcher]:
            thread.join(timeout=DELIVERY_LIMIT_S + REPLY_TIMEOUT_S + 5)
    stragglers = [chatter.name for chatter in chatters if chatter.is_alive()]
    return account(stack, ledger, per_fault, watcher.peak, clients, time.monotonic() - started, stragglers)


def account(
    stack: Stack,
    ledger: Ledger,
    per_fault: list[dict],
    peak: int,
    clients: int,
    duration: float,
    stragglers: list[str],
) -> dict:
    """Every message written, looked up by its client_id: stored once, with the id its ack named."""
    with psycopg.connect(stack.dsn("chat_owner", through_pgbouncer=False)) as owner:
        rows = owner.execute(
            "SELECT client_id, id FROM chat_message WHERE client_id = ANY(%s)", [list(ledger.sent)]
        ).fetchall()
    recoveries = [fault["recovery_s"] for fault in per_fault]
    return {
        "faults": [fault["fault"] for fault in per_fault],
        "clients": clients,
        "duration_s": round(duration, 1),
        **ledger_outcome(ledger, rows),
        "stragglers": stragglers,
        "max_recovery_s": max(recoveries, default=0.0),
        "recovery_limit_s": RECOVERY_LIMIT_S,
        "per_fault": per_fault,
        "server_connections_peak": peak,
        "server_connection_bound": connection_bound(),
    }


def ledger_outcome(ledger: Ledger, rows: list[tuple[str, int]]) -> dict:
    """What became of every message written, from the (client_id, id) rows stored for them."""
    stored = Counter(client_id for client_id, _ in rows)
    row_ids = {client_id: message_id for client_id, message_id in rows}
    acked, sent = ledger.acked, ledger.sent
    return {
        "sent": len(sent),
        "acknowledged": len(acked),
        "duplicate_acks": ledger.duplicate_acks,
        "stored_exactly_once": sum(1 for client_id in sent if stored[client_id] == 1),
        "duplicates": sum(count - 1 for count in stored.values() if count > 1),
        # Acknowledged, but no row: the server's promise broken.
        "lost": sum(1 for client_id in acked if not stored[client_id]),
        # Written, never acknowledged, and not stored: the user's message gone.
        "lost_unacknowledged": sum(
            1 for client_id in sent if client_id not in acked and not stored[client_id]
        ),
        "stored_unacknowledged": sum(1 for client_id in sent if client_id not in acked and stored[client_id]),
        "ack_mismatches": sum(
            1 for client_id, message_id in acked.items() if row_ids.get(client_id) != message_id
        ),
        "errors": sum(ledger.errors.values()),
        "errors_by_kind": dict(sorted(ledger.errors.items())),
        "close_codes": dict(sorted(ledger.closes.items())),
        "hangs": ledger.errors["timeout"],
    }


def problems(summary: dict) -> list[str]:
    found = []
    if summary["lost"]:
        found.append(f"{summary['lost']} acknowledged message(s) missing from PostgreSQL")
    unacknowledged = summary["lost_unacknowledged"] + summary["stored_unacknowledged"]
    if unacknowledged:
        found.append(
            f"{unacknowledged} message(s) never acknowledged within {DELIVERY_LIMIT_S:g} s "
            f"of the load's end ({summary['lost_unacknowledged']} not stored)"
        )
    if summary["duplicates"]:
        found.append(f"{summary['duplicates']} message(s) stored more than once")
    if summary["ack_mismatches"]:
        found.append(f"{summary['ack_mismatches']} ack(s) named another row than the one stored")
    if summary["hangs"]:
        found.append(f"{summary['hangs']} message(s) got no answer within {REPLY_TIMEOUT_S:g} s")
    if summary["stragglers"]:
        found.append(
            f"client thread(s) still running after their deadline: {', '.join(summary['stragglers'])}"
        )
    if summary["max_recovery_s"] > summary["recovery_limit_s"]:
        found.append(f"recovery took {summary['max_recovery_s']} s (limit {summary['recovery_limit_s']:g} s)")
    if summary["server_connections_peak"] > summary["server_connection_bound"]:
        found.append(
            f"server connections peaked at {summary['server_connections_peak']} "
            f"(bound {summary['server_connection_bound']})"
        )
    if not summary["acknowledged"]:
        found.append("no message was acknowledged at all")
    return found


def table(summary: dict) -> str:
    lines = [
        "| fault | fault lasted s | recovery s | client errors | close codes seen |",
        "|---|---:|---:|---|---|",
    ]
    lines += [
        f"| {f['fault']} | {f['fault_s']:g} | {f['recovery_s']:g} | {_counts(f['errors_by_kind'])} "
        f"| {_counts(f['close_codes'])} |"
        for f in summary["per_fault"]
    ]
    lines.append("")
    lines.append(
        f"sent {summary['sent']}, stored exactly once {summary['stored_exactly_once']}, "
        f"duplicates {summary['duplicates']}, lost {summary['lost']} acknowledged + "
        f"{summary['lost_unacknowledged']} unacknowledged; acknowledged {summary['acknowledged']} "
        f"({summary['duplicate_acks']} as duplicates of a resend); hangs {summary['hangs']}"
    )
    lines.append(
        f"server connections peak {summary['server_connections_peak']} "
        f"(bound {summary['server_connection_bound']}); max recovery {summary['max_recovery_s']:g} s"
    )
    return "\n".join(lines)


def _counts(counts: dict) -> str:
    return ", ".join(f"{kind} ×{count}" for kind, count in counts.items()) or "-"
