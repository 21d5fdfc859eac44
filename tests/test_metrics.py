"""The app's metrics (app/chat_site/metrics_server.py) against the real Daphne processes.

Each Daphne process counts in its own files; the metrics program adds them up. The
tests open sockets on a chosen process: the others are stopped (SIGSTOP) meanwhile,
so the kernel cannot hand the connection to any of them, and each process's open
sockets are known exactly.
"""

import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket
from app_processes import (
    SHOWS_WITHIN_S,
    per_process,
    scrape,
    scrape_until,
    served_by,
    total,
    wait_for_metrics,
)
from prometheus_client.samples import Sample

from chat.pool_metrics import SAMPLE_INTERVAL_S
from native.profiles import SHIPPED
from probes.chat import ChatHttp, ChatSocket

POOL_GAUGES = (
    "chat_db_pool_size",
    "chat_db_pool_available",
    "chat_db_pool_max",
    "chat_db_pool_requests_waiting",
)
POOL_COUNTERS = (
    "chat_db_pool_requests_total",
    "chat_db_pool_requests_wait_seconds_total",
    "chat_db_pool_timeouts_total",
    "chat_db_pool_connections_lost_total",
)


def settled(stack, counter: str) -> list[Sample]:
    """A scrape once the pool samplers have caught up: the counter unchanged for longer
    than they take to sample (nothing else uses the database meanwhile)."""
    deadline = time.monotonic() + SHOWS_WITHIN_S
    samples = scrape(stack)
    while time.monotonic() < deadline:
        time.sleep(SAMPLE_INTERVAL_S * 1.5)
        previous, samples = samples, scrape(stack)
        if total(samples, counter) == total(previous, counter):
            return samples
    raise AssertionError(f"{counter} still moving after {SHOWS_WITHIN_S:g}s")


@pytest.fixture
def fresh_app(stack):
    """The app restarted: new Daphne processes, and every count from zero."""
    stack.restart_app(SHIPPED)
    wait_for_metrics(stack)
    return stack.daphne_pids()


def test_sockets_messages_errors_and_refusals_are_counted_exactly(fresh_app, stack, room):
    first, second = fresh_app
    with served_by(stack, first):
        on_first = [ChatSocket(stack.app_url, room, f"first{n}") for n in range(3)]
    with served_by(stack, second):
        on_second = [ChatSocket(stack.app_url, room, f"second{n}") for n in range(2)]
    sockets = on_first + on_second
    for n, socket in enumerate(sockets):
        assert socket.post(f"hello {n}", f"c{n}")["type"] == "ack"
    assert sockets[0].post("hello again", "c0")["duplicate"]  # a resend: stored once, counted once
    sockets[0].send("not json")
    assert sockets[0].receive_until("error")["code"] == "invalid_json"
    refused = ChatSocket(stack.app_url, "no-such-room", "lost")
    assert refused.ready["code"] == "room_not_found"
    assert refused.close_code() == 4404
    with pytest.raises(websocket.WebSocketBadStatusException):
        ChatSocket(stack.app_url, room, "mallory", origin="http://evil.example")

    # The refused socket was open for a moment: wait until its disconnect is counted.
    samples = scrape_until(stack, lambda s: total(s, "chat_websockets_open") == 5)
    assert per_process(samples, "chat_websockets_open") == {first: 3, second: 2}
    assert total(samples, "chat_messages_acknowledged_total") == 5
    assert total(samples, "chat_errors_total", code="invalid_json") == 1
    assert total(samples, "chat_errors_total", code="room_not_found") == 1  # the refusal's error frame
    assert total(samples, "chat_errors_total") == 2
    assert total(samples, "chat_handshakes_refused_total", reason="room_not_found") == 1
    assert total(samples, "chat_handshakes_refused_total", reason="origin") == 1
    assert total(samples, "chat_handshakes_refused_total") == 2

    for socket in sockets:
        socket.close()
    samples = scrape_until(stack, lambda s: total(s, "chat_websockets_open") == 0)
    assert per_process(samples, "chat_websockets_open") == {first: 0, second: 0}


def test_each_process_reports_its_pool(stack, django_app, room):
    max_size = django_app.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]
    pids = stack.daphne_pids()
    before = settled(stack, "chat_db_pool_requests_total")  # the room's creation counted
    with served_by(stack, pids[0]):
        socket = ChatSocket(stack.app_url, room, "pooled")  # finds the room: a connection from the pool
    for n in range(3):  # each stored with a connection from the pool
        socket.post(f"m{n}", f"p{n}")
    socket.close()
    requests = total(before, "chat_db_pool_requests_total") + 4
    samples = settled(stack, "chat_db_pool_requests_total")

    assert per_process(samples, "chat_db_pool_max") == dict.fromkeys(pids, max_size)
    for gauge in POOL_GAUGES:
        assert set(per_process(samples, gauge)) == set(pids), gauge
    assert 1 <= per_process(samples, "chat_db_pool_size")[pids[0]] <= max_size
    assert total(samples, "chat_db_pool_requests_total") == requests  # each sampled once, not again
    for counter in POOL_COUNTERS:
        assert any(s.name == counter for s in samples), counter


def test_the_metrics_are_not_served_on_the_app_port(stack):
    assert ChatHttp(stack.app_url).request("GET", "/metrics").status == 404
    with urllib.request.urlopen(stack.metrics_url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
    elsewhere = stack.metrics_url.removesuffix("/metrics") + "/"
    with pytest.raises(urllib.error.HTTPError) as not_found:
        urllib.request.urlopen(elsewhere, timeout=5)
    assert not_found.value.code == 404


def test_a_killed_process_leaves_its_counts_but_not_its_open_sockets(fresh_app, stack, room):
    doomed, survivor = fresh_app
    with served_by(stack, doomed):
        on_doomed = [ChatSocket(stack.app_url, room, f"doomed{n}") for n in range(2)]
    with served_by(stack, survivor):
        on_survivor = ChatSocket(stack.app_url, room, "survivor")
    for n, socket in enumerate([*on_doomed, on_survivor]):
        socket.post(f"before the kill {n}", f"k{n}")
    samples = scrape(stack)
    assert per_process(samples, "chat_websockets_open") == {doomed: 2, survivor: 1}
    assert total(samples, "chat_messages_acknowledged_total") == 3

    stack.kill_worker(doomed)  # SIGKILL: no disconnect runs; supervisord starts another
    samples = scrape_until(
        stack, lambda s: set(per_process(s, "chat_websockets_open")) == replaced(stack, doomed)
    )
    (replacement,) = replaced(stack, doomed) - {survivor}
    assert per_process(samples, "chat_websockets_open") == {survivor: 1, replacement: 0}
    assert doomed not in per_process(samples, "chat_db_pool_size")
    assert total(samples, "chat_messages_acknowledged_total") == 3  # the dead process's 2 still count
    for socket in [*on_doomed, on_survivor]:
        socket.close()


def replaced(stack, dead: int) -> set[int]:
    """The Daphne processes once the dead one has been replaced; empty until then."""
    pids = set(stack.daphne_pids())
    return pids if dead not in pids and len(pids) == stack.config.app_workers else set()


@pytest.fixture
def app_without_pool(stack):
    stack.restart_app(SHIPPED, {"DATABASE_POOL_MAX_SIZE": "0"})
    try:
        wait_for_metrics(stack)
        yield
    finally:
        stack.restart_app(SHIPPED)


def test_without_a_pool_there_are_no_pool_metrics(app_without_pool, stack, room):
    socket = ChatSocket(stack.app_url, room, "unpooled")
    assert socket.post("no pool", "n1")["type"] == "ack"
    socket.close()
    samples = scrape_until(stack, lambda s: total(s, "chat_messages_acknowledged_total") == 1)
    assert total(samples, "chat_messages_acknowledged_total") == 1
    assert [s.name for s in samples if s.name.startswith("chat_db_pool")] == []


# Members leave a room whose broadcasts outrun them, so their consumers have broadcasts
# queued when the close comes: some are dispatched to a socket already closing. Before
# send_frame let that pass, the consumer died on it without disconnect(): its socket
# stayed counted open (and in its group), and this test failed.
MEMBERS, POSTERS, ROUNDS = 40, 6, 3


def test_a_member_leaving_during_a_broadcast_is_counted_out(fresh_app, stack, room):
    marks = stack.log_marks()
    for _ in range(ROUNDS):
        members = [ChatSocket(stack.app_url, room, f"member{n}") for n in range(MEMBERS)]
        posters = [ChatSocket(stack.app_url, room, f"poster{n}") for n in range(POSTERS)]
        stop = threading.Event()

        def flood(poster: ChatSocket, stop: threading.Event) -> int:
            # Without waiting for acks: as fast as the socket's rate limit lets through.
            sent = 0
            while not stop.is_set() and sent < 200:
                poster.send({"type": "message", "text": f"busy {sent}", "client_id": uuid.uuid4().hex})
                sent += 1
                time.sleep(1 / 20)
            return sent

        with ThreadPoolExecutor(max_workers=POSTERS + MEMBERS) as pool:
            floods = [pool.submit(flood, poster, stop) for poster in posters]
            time.sleep(1)  # the members' consumers behind with broadcasts
            closes = [pool.submit(member.close) for member in members]
            for close in closes:
                close.result(timeout=30)
            stop.set()
            assert all(flood.result(timeout=30) > 0 for flood in floods)
        for poster in posters:
            poster.close()
        samples = scrape_until(stack, lambda s: total(s, "chat_websockets_open") == 0)
        assert total(samples, "chat_websockets_open") == 0, per_process(samples, "chat_websockets_open")
    assert "Exception inside application" not in stack.logs_since(marks, lines=100000)
