"""CHAT_DATABASE_THREADS against the real stack: the consumer's database calls on a few
threads per process, each call's connection back in Django's pool when it ends.

What must hold with the threads on: a socket's messages are stored and acknowledged in
the order it sent them; PgBouncer never sees more clients of the app role than the
processes' pools hold, nor PostgreSQL more server connections than PgBouncer's bound;
and calls for different sockets really run at once, where the default runs them one
after the other.
"""

import contextlib
import threading
import time
import uuid

import psycopg
import pytest
from app_processes import per_process, scrape_until, served_by, total, wait_for_metrics
from held_posts import inserts_waiting_for_a_lock
from pipelined import acks_in_order, answers, pipeline

from native.profiles import SHIPPED
from pooled_postgres.observe import pgbouncer_show, role_connections
from probes.chat import ChatSocket
from probes.connections import APP_DATABASE, APP_ROLE, connection_bound

POOL_MAX_SIZE = 4
THREADS = 4  # as many as the pool has connections: the most settings.py allows
# The per-socket rate limit would refuse a pipelined burst; these tests are about the database.
UNLIMITED = {"CHAT_RATE_PER_S": "10000", "CHAT_RATE_BURST": "10000"}
# How long the room stays locked while inserts queue behind the lock: well under the app
# role's statement_timeout (5 s), which would cancel them.
LOCK_WINDOW_S = 3.0


def close_this_process_pool() -> None:
    """The in-process consumer tests (django_app) give this process a Django pool of its own,
    logged in to PgBouncer as the app role for the rest of the session: PgBouncer would
    count its idle connections among the app's clients. Closed here; it reopens on use."""
    from django.conf import settings

    if settings.configured:
        from django.db import connections

        for connection in connections.all():
            connection.close_pool()


@pytest.fixture(scope="module")
def threaded_app(stack):
    close_this_process_pool()
    stack.restart_app(
        SHIPPED,
        {"CHAT_DATABASE_THREADS": str(THREADS), "DATABASE_POOL_MAX_SIZE": str(POOL_MAX_SIZE), **UNLIMITED},
    )
    try:
        wait_for_metrics(stack)
        yield stack
    finally:
        stack.restart_app(SHIPPED)


def test_the_default_runs_one_database_call_at_a_time_per_process(stack, room, owner_db, monitor_db):
    assert stack.running_app() == (SHIPPED, {})  # CHAT_DATABASE_THREADS unset: Channels' one thread
    assert most_inserts_waiting_at_once(stack, room, owner_db, monitor_db) == 1


def test_database_calls_for_different_sockets_run_at_once(threaded_app, room, owner_db, monitor_db):
    assert most_inserts_waiting_at_once(threaded_app, room, owner_db, monitor_db) == 2


def most_inserts_waiting_at_once(stack, room, owner_db, monitor_db) -> int:
    """Two sockets on one Daphne process each post a message while the room's row is locked.

    Each INSERT's foreign key check needs a share lock on that row, so an INSERT that has
    reached PostgreSQL waits there, visibly (pg_stat_activity: wait_event_type Lock), on a
    server connection of the app role. The second post is sent once the first one's call
    is seen waiting: sent together, both could go in one call (chat/posting.py stores
    the posts that are waiting when a call starts together). With one database thread
    the second call waits for the first in the process, and never reaches PostgreSQL
    while the lock is held; with threads, both do. Returns the most seen waiting at once
    during LOCK_WINDOW_S (or 2 as soon as seen); then the lock goes and both messages
    must be acknowledged.
    """
    with served_by(stack, stack.daphne_pids()[0]):
        sockets = [ChatSocket(stack.app_url, room, f"writer{n}") for n in range(2)]
    client_ids = [f"held-{uuid.uuid4().hex[:8]}-{n}" for n in range(2)]
    most = 0
    with owner_db.transaction():
        owner_db.execute("SELECT 1 FROM chat_room WHERE slug = %s FOR UPDATE", [room])
        for sent, (socket, client_id) in enumerate(zip(sockets, client_ids, strict=True), start=1):
            socket.send({"type": "message", "text": "behind the lock", "client_id": client_id})
            deadline = time.monotonic() + LOCK_WINDOW_S
            while most < sent and time.monotonic() < deadline:
                most = max(most, inserts_waiting_for_a_lock(monitor_db))
                time.sleep(0.02)
            assert most >= 1, "the first post's call never reached PostgreSQL"
    for socket, client_id in zip(sockets, client_ids, strict=True):
        (answer,) = answers(socket, 1)
        assert answer["type"] == "ack", answer
        assert answer["client_id"] == client_id
        socket.close()
    return most


def test_each_sockets_messages_are_stored_and_acknowledged_in_the_order_sent(threaded_app, room, owner_db):
    per_socket = 50
    sockets = {f"writer{n}": ChatSocket(threaded_app.app_url, room, f"writer{n}") for n in range(4)}
    sent = pipeline(sockets, per_socket)

    acked = acks_in_order(sockets, sent)
    for socket in sockets.values():
        socket.close()

    rows = owner_db.execute(
        "SELECT m.author, m.client_id, m.id FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s ORDER BY m.id",
        [room],
    ).fetchall()
    for name in sockets:
        mine = [(client_id, message_id) for author, client_id, message_id in rows if author == name]
        assert mine == list(zip(sent[name], acked[name], strict=True))  # stored once each, in order


class ConnectionPeaks(threading.Thread):
    """Samples, until stopped, PgBouncer's clients of the app role (SHOW CLIENTS) and
    PostgreSQL's server connections of the app role (pg_stat_activity); keeps the peaks."""

    def __init__(self, console: psycopg.Connection, monitor: psycopg.Connection):
        super().__init__(name="connection-peaks")
        self.console, self.monitor = console, monitor
        self.stop = threading.Event()
        self.samples = self.clients = self.servers = 0

    def run(self) -> None:
        while not self.stop.is_set():
            clients = pgbouncer_show(self.console, "CLIENTS")
            self.clients = max(
                self.clients,
                sum(1 for row in clients if row["user"] == APP_ROLE and row["database"] == APP_DATABASE),
            )
            self.servers = max(self.servers, role_connections(self.monitor, APP_DATABASE, APP_ROLE))
            self.samples += 1
            time.sleep(0.01)


@contextlib.contextmanager
def connection_peaks(console, monitor):
    peaks = ConnectionPeaks(console, monitor)
    peaks.start()
    try:
        yield peaks
    finally:
        peaks.stop.set()
        peaks.join()


def test_no_connection_outlives_its_call(threaded_app, room, pgbouncer_console, monitor_db):
    processes = len(threaded_app.daphne_pids())
    with connection_peaks(pgbouncer_console, monitor_db) as peaks:
        sockets = {f"writer{n}": ChatSocket(threaded_app.app_url, room, f"writer{n}") for n in range(8)}
        pipeline(sockets, 40)
        for socket in sockets.values():
            assert {frame["type"] for frame in answers(socket, 40)} == {"ack"}
            socket.close()
    assert peaks.samples >= 10  # sampled throughout, not once
    assert 1 <= peaks.clients <= processes * POOL_MAX_SIZE
    assert 1 <= peaks.servers <= connection_bound()

    # Every call handed its connection back: each process's pool holds all of its
    # connections idle, and nothing waits for one.
    def all_returned(samples) -> bool:
        size = per_process(samples, "chat_db_pool_size")
        return bool(size) and size == per_process(samples, "chat_db_pool_available")

    samples = scrape_until(threaded_app, all_returned)
    assert per_process(samples, "chat_db_pool_available") == per_process(samples, "chat_db_pool_size")
    assert set(per_process(samples, "chat_db_pool_size")) == set(threaded_app.daphne_pids())
    assert total(samples, "chat_db_pool_requests_waiting") == 0
