"""Faults under load, and the ledger that proves what survived them: `make chaos`'s machinery.

Chat clients (threads) post messages while one fault after another is injected
into the native stack; every acknowledged message is then looked up in
PostgreSQL. The library behind `python -m loadtest.chaos` and tests/test_faults.py.
"""

import itertools
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
from native.stack import Stack
from probes.chat import ChatHttp, ChatSocket
from probes.connections import connection_bound

RECOVERY_LIMIT_S = 30.0  # from a fault's end until a new client's message is acknowledged
REPLY_TIMEOUT_S = 20.0  # longer than any wait the stack may impose (query_wait_timeout 10 s)
PAUSE_S = 3.0


@dataclass
class Ledger:
    """What the clients saw, shared by their threads."""

    acked: dict[int, str] = field(default_factory=dict)  # message id -> client_id
    errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, message_id: int, client_id: str) -> None:
        with self.lock:
            self.acked[message_id] = client_id

    def error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] += 1


class Chatter(threading.Thread):
    """A room member posting a message every `pace` seconds, reconnecting when dropped."""

    def __init__(
        self, base_url: str, room: str, name: str, ledger: Ledger, stop: threading.Event, pace: float
    ):
        super().__init__(name=name, daemon=True)
        self.base_url, self.room, self.ledger, self.stop, self.pace = base_url, room, ledger, stop, pace

    def run(self) -> None:
        backoff = 0.2
        while not self.stop.is_set():
            try:
                socket = ChatSocket(self.base_url, self.room, self.name, timeout=REPLY_TIMEOUT_S)
            except (OSError, websocket.WebSocketException):
                self.ledger.error("connect_refused")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if socket.ready["type"] == "error":  # e.g. "unavailable", then a close code
                self.ledger.error(f"connect:{socket.ready['code']}")
                socket.close()
                self.stop.wait(backoff)
                continue
            backoff = 0.2
            self._post_until_dropped(socket)
            socket.close()

    def _post_until_dropped(self, socket: ChatSocket) -> None:
        while not self.stop.wait(self.pace):
            client_id = uuid.uuid4().hex
            try:
                reply = socket.post(f"chaos {client_id[:8]}", client_id)
            except websocket.WebSocketTimeoutException:
                self.ledger.error("timeout")  # no answer: the one outcome that must never happen
                return
            except (OSError, websocket.WebSocketException, ValueError):
                self.ledger.error("connection_dropped")
                return
            if reply["type"] == "ack":
                self.ledger.ack(reply["id"], client_id)
            else:
                self.ledger.error(reply["code"])


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


def kill_daphne(stack: Stack) -> None:
    workers = stack.daphne_pids()
    if not workers:
        raise StackError("no Daphne process to kill")
    stack.kill_worker(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + RECOVERY_LIMIT_S
    while len(stack.daphne_pids()) < len(workers) or workers[0] in stack.daphne_pids():
        if time.monotonic() > deadline:
            raise StackError("supervisord did not restart the killed Daphne process")
        time.sleep(0.2)


FAULTS: dict[str, Callable[[Stack], None]] = {
    "pgbouncer-pause": pause_pgbouncer,
    "pgbouncer-restart": restart("pgbouncer"),
    "postgres-restart": restart("postgres"),
    "pool-saturated": saturate_pool,
    "daphne-killed": kill_daphne,
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


def recovery_seconds(stack: Stack, room: str, since: float) -> float:
    """Seconds from `since` (the fault's end) until a new client's message is acknowledged."""
    deadline = since + RECOVERY_LIMIT_S * 2
    while time.monotonic() < deadline:
        try:
            socket = ChatSocket(stack.app_url, room, "probe", timeout=REPLY_TIMEOUT_S)
            ok = socket.ready["type"] == "ready" and socket.post("probe", uuid.uuid4().hex)["type"] == "ack"
            socket.close()
            if ok:
                return round(time.monotonic() - since, 2)
        except (OSError, websocket.WebSocketException, ValueError):
            pass
        time.sleep(0.2)
    return float("inf")


def run(stack: Stack, faults: list[str], clients: int = 30, pace: float = 0.2, settle_s: float = 3.0) -> dict:
    """Run the clients, inject each fault in turn, and account for every acknowledgement."""
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
            errors_before = sum(ledger.errors.values())
            print(f"  injecting {name} ...", flush=True)
            injected = time.monotonic()
            FAULTS[name](stack)
            ended = time.monotonic()
            recovered = recovery_seconds(stack, rooms[0], ended)
            time.sleep(settle_s)  # load keeps running on the recovered stack
            per_fault.append(
                {
                    "fault": name,
                    "fault_s": round(ended - injected, 2),
                    "recovery_s": recovered,
                    "errors": sum(ledger.errors.values()) - errors_before,
                }
            )
            print(f"    lasted {ended - injected:.1f} s; serving again {recovered:g} s later", flush=True)
    finally:
        stop.set()
        for thread in [*chatters, watcher]:
            thread.join(timeout=REPLY_TIMEOUT_S + 5)
    return account(stack, ledger, per_fault, watcher.peak, clients, time.monotonic() - started)


def account(
    stack: Stack, ledger: Ledger, per_fault: list[dict], peak: int, clients: int, duration: float
) -> dict:
    with psycopg.connect(stack.dsn("chat_owner", through_pgbouncer=False)) as owner:
        rows = owner.execute(
            "SELECT id, client_id FROM chat_message WHERE id = ANY(%s)", [list(ledger.acked)]
        ).fetchall()
    persisted = sum(1 for message_id, client_id in rows if ledger.acked[message_id] == client_id)
    recoveries = [fault["recovery_s"] for fault in per_fault]
    return {
        "faults": [fault["fault"] for fault in per_fault],
        "clients": clients,
        "duration_s": round(duration, 1),
        "acknowledged": len(ledger.acked),
        "persisted": persisted,
        "lost": len(ledger.acked) - persisted,
        "errors": sum(ledger.errors.values()),
        "errors_by_kind": dict(sorted(ledger.errors.items())),
        "hangs": ledger.errors["timeout"],
        "max_recovery_s": max(recoveries, default=0.0),
        "recovery_limit_s": RECOVERY_LIMIT_S,
        "per_fault": per_fault,
        "server_connections_peak": peak,
        "server_connection_bound": connection_bound(),
    }


def problems(summary: dict) -> list[str]:
    found = []
    if summary["lost"]:
        found.append(f"{summary['lost']} acknowledged message(s) missing from PostgreSQL")
    if summary["hangs"]:
        found.append(f"{summary['hangs']} message(s) got no answer within {REPLY_TIMEOUT_S:g} s")
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
    lines = ["| fault | fault lasted s | recovery s | client errors |", "|---|---:|---:|---:|"]
    lines += [
        f"| {f['fault']} | {f['fault_s']:g} | {f['recovery_s']:g} | {f['errors']} |"
        for f in summary["per_fault"]
    ]
    lines.append("")
    lines.append(
        f"acknowledged {summary['acknowledged']}, persisted {summary['persisted']}, lost {summary['lost']}; "
        f"errors {summary['errors']} {summary['errors_by_kind']}; hangs {summary['hangs']}"
    )
    lines.append(
        f"server connections peak {summary['server_connections_peak']} "
        f"(bound {summary['server_connection_bound']}); max recovery {summary['max_recovery_s']:g} s"
    )
    return "\n".join(lines)
