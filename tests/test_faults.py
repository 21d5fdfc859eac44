"""Faults under load: nothing acknowledged is lost, nobody hangs, the stack recovers by itself.

Each test runs `make chaos`'s machinery with a small load against the test
stack and leaves the stack serving again.
"""

import signal
import time

import psycopg
import pytest

from loadtest import chaos, faults
from native.profiles import SHIPPED
from probes.chat import ChatHttp, ChatSocket

# What a client may see while a fault lasts, and the close codes its sockets may end
# with; anything else (above all "timeout", a reply that never came, or a socket that
# closed with an ack pending during a graceful stop) fails the test.
EXPECTED = {
    # The pause is shorter than query_wait_timeout: clients only wait.
    "pgbouncer-pause": (set(), set()),
    "pgbouncer-restart": ({"unavailable", "connect:unavailable"}, {"4503"}),
    "postgres-restart": ({"unavailable", "connect:unavailable"}, {"4503"}),
    "pool-saturated": ({"unavailable", "connect:unavailable"}, {"4503"}),
    # SIGKILL: the process's sockets drop with no close frame (1006), their acks pending.
    "daphne-killed": ({"connection_dropped", "connect_refused"}, {"1006"}),
    # SIGTERM: every socket of the stopping process closes with 1001, no ack pending.
    "daphne-rolling-restart": ({"going_away"}, {"1001"}),
    "app-graceful-restart": ({"going_away", "connect_refused"}, {"1001"}),
}
GRACEFUL = {"daphne-rolling-restart", "app-graceful-restart"}
# Longer than the drain takes to send 1001 (once the client is quiet for 0.5 s) plus
# autobahn's default close handshake timeout (1 s); shorter than the drain (10 s).
SLOW_CLIENT_S = 3.0


@pytest.mark.parametrize("fault", list(faults.FAULTS))
def test_under_load_every_message_written_is_stored_exactly_once(stack, fault):
    summary = faults.run(stack, [fault], clients=10, settle_s=2.0)
    assert_survived(summary, fault)


# Connections broken under the threads, and threads queueing for PgBouncer's last ones.
@pytest.mark.parametrize("fault", ["pgbouncer-restart", "pool-saturated"])
def test_chaos_with_the_database_threads_on_loses_nothing_and_restores_the_app(stack, fault):
    assert stack.running_app() == (SHIPPED, {})
    with chaos.app_with(stack, {"CHAT_DATABASE_THREADS": "4"}) as settings:
        assert settings == {"CHAT_DATABASE_THREADS": "4"}
        assert stack.running_app() == (SHIPPED, settings)
        summary = faults.run(stack, [fault], clients=10, settle_s=2.0)
    assert stack.running_app() == (SHIPPED, {})
    assert_survived(summary, fault)


def test_chaos_refuses_an_app_setting_that_is_not_name_equals_value(capsys):
    with pytest.raises(SystemExit) as exit_:
        chaos.main(["--app-setting", "CHAT_DATABASE_THREADS"])
    assert exit_.value.code == 2
    assert "'CHAT_DATABASE_THREADS' is not NAME=VALUE" in capsys.readouterr().err


def assert_survived(summary: dict, fault: str) -> None:
    assert faults.problems(summary) == []
    assert summary["sent"] > 0
    assert summary["stored_exactly_once"] == summary["sent"]
    assert summary["duplicates"] == summary["lost"] == summary["lost_unacknowledged"] == 0
    assert summary["acknowledged"] == summary["sent"]
    assert summary["hangs"] == 0
    errors, closes = EXPECTED[fault]
    assert set(summary["errors_by_kind"]) <= errors
    assert set(summary["close_codes"]) <= closes
    if fault in GRACEFUL:  # the stopped processes had clients, and each saw 1001
        assert summary["close_codes"].get("1001", 0) > 0
    assert summary["server_connections_peak"] <= summary["server_connection_bound"]
    assert summary["max_recovery_s"] <= faults.RECOVERY_LIMIT_S


def test_a_client_slow_to_answer_the_1001_still_gets_a_clean_close(stack, room):
    """A client that reads nothing for a while (a busy machine, a stalled event loop) when
    its server process stops: it still finds `closing` and 1001, and its answer to the
    close is taken. Autobahn's default close handshake timeout (1 s) would abort the
    connection first, and the client would see a connection reset instead of 1001."""
    socket = ChatSocket(stack.app_url, room, "slow", timeout=faults.REPLY_TIMEOUT_S)
    workers = stack.daphne_pids()
    for worker in workers:  # the socket's process is one of them
        stack.kill_worker(worker, signal.SIGTERM)
    try:
        time.sleep(SLOW_CLIENT_S)  # the slow client: reads nothing meanwhile
        assert socket.receive()["type"] == "closing"
        assert socket.close_code() == 1001  # and websocket-client's answering close frame is sent
    finally:
        socket.ws.shutdown()
        for worker in workers:  # the stack serving again for the next test, pass or fail
            faults.wait_for_daphnes(stack, len(workers), worker)


def test_database_down_gives_clear_errors_then_recovers(stack, room):
    socket = ChatSocket(stack.app_url, room, "alice", timeout=faults.REPLY_TIMEOUT_S)
    stack.stop("pgbouncer")
    try:
        reply = socket.post("while PgBouncer is down", "down-1")
        assert reply["type"] == "error"
        assert reply["code"] == "unavailable"
        assert "may not have been stored" in reply["message"]
        health = ChatHttp(stack.app_url).request("GET", "/healthz")
        assert health.status == 503
        newcomer = ChatSocket(stack.app_url, room, "bob", timeout=faults.REPLY_TIMEOUT_S)
        assert newcomer.ready["code"] == "unavailable"
        assert newcomer.close_code() == 4503  # unavailable: reconnect later
    finally:
        stack.restart("pgbouncer")
    assert socket.post("after the restart", "up-1")["type"] == "ack"
    socket.close()


def test_a_statement_longer_than_statement_timeout_is_cancelled(stack):
    """The app role's statement_timeout (5 s) cuts a runaway statement and frees its server."""
    app = psycopg.connect(stack.dsn("chat_app", through_pgbouncer=True))
    with app, pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
        app.execute("SELECT pg_sleep(30)")


def _fill_the_pool_then_restart_pgbouncer(stack, connection) -> None:
    """Leave Django's pool holding at least four idle connections that PgBouncer's restart killed."""
    connection.ensure_connection()  # opens the pool
    connection.close()
    connection.pool.resize(min_size=4, max_size=4)
    connection.pool.wait(timeout=10)
    assert connection.pool.get_stats()["pool_available"] >= 4
    stack.restart("pgbouncer")


def test_pooled_connections_survive_a_pgbouncer_restart(stack, django_app):
    """A pool full of connections that PgBouncer's restart killed costs no failed query.

    psycopg_pool waits 1, 2, 4 s between failed checks within one checkout, so
    discarding four dead connections one at a time would outlast the pool's 5 s
    timeout; the check (pooled-postgres/src/pooled_postgres/base.py) sweeps them all at the first.
    """
    from django.db import connection

    from pooled_postgres.base import check_connection_when_disturbed

    assert connection.pool._check is check_connection_when_disturbed
    try:
        _fill_the_pool_then_restart_pgbouncer(stack, connection)
        for _ in range(8):  # every connection the pool had, and then some
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                assert cursor.fetchone() == (1,)
            connection.close()
    finally:
        connection.pool.resize(min_size=1, max_size=4)


def test_with_djangos_stock_check_a_pgbouncer_restart_times_requests_out(stack, django_app):
    """Why the shipped check sweeps: the stock one (DATABASE_POOL_CHECK=query) finds the
    dead connections one backoff step at a time, and the next request gives up."""
    from django.db import OperationalError, connection
    from psycopg_pool import ConnectionPool

    shipped_check = connection.pool._check
    # A wrapper, not the function itself: the backend would swap that one back.
    connection.pool._check = lambda conn: ConnectionPool.check_connection(conn)
    try:
        _fill_the_pool_then_restart_pgbouncer(stack, connection)
        with pytest.raises(OperationalError, match="couldn't get a connection after 5"):
            connection.ensure_connection()
    finally:
        connection.close()
        connection.pool._check = shipped_check
        connection.pool.check()  # the dead ones the failed checkout did not reach
        connection.pool.resize(min_size=1, max_size=4)


def test_after_a_long_pgbouncer_outage_the_pool_connects_at_the_next_request(stack, django_app):
    """psycopg_pool retries a failed connection after about 1, 2, 4, 8, 16 s: after 17 s
    without PgBouncer its next try would come some 15 s after PgBouncer is back, and
    requests meanwhile time out. With reconnect_timeout at the pool's timeout (settings.py)
    each attempt ends before backing off that far, and the next request starts one at once."""
    from django.db import OperationalError, connection

    assert connection.pool.reconnect_timeout == connection.pool.timeout
    stack.stop("pgbouncer")
    outage_ends = time.monotonic() + 17
    try:
        with pytest.raises(OperationalError):
            connection.ensure_connection()  # the pool's attempts to reconnect start here
        time.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage itself
    finally:
        stack.restart("pgbouncer")
    with connection.cursor() as cursor:  # one request, within the pool's 5 s timeout
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
    connection.close()
