"""Faults under load: nothing acknowledged is lost, nobody hangs, the stack recovers by itself.

Each test runs `make chaos`'s machinery with a small load against the test
stack and leaves the stack serving again.
"""

import psycopg
import pytest

from loadtest import chaos
from loadtest.client import ChatHttp, ChatSocket

# What a client may see while a fault lasts; anything else (above all "timeout",
# a reply that never came) fails the test.
CLEAR_ERRORS = {
    "pgbouncer-pause": set(),  # the pause is shorter than query_wait_timeout: clients only wait
    "pgbouncer-restart": {"unavailable", "connect:unavailable"},
    "postgres-restart": {"unavailable", "connect:unavailable"},
    "pool-saturated": {"unavailable", "connect:unavailable"},
    "daphne-killed": {"connection_dropped", "connect_refused"},
}


@pytest.mark.parametrize("fault", list(chaos.FAULTS))
def test_fault_under_load_loses_no_acknowledged_message(stack, fault):
    summary = chaos.run(stack, [fault], clients=10, settle_s=2.0)
    assert chaos.problems(summary) == []
    assert summary["acknowledged"] > 0
    assert summary["lost"] == 0
    assert summary["persisted"] == summary["acknowledged"]
    assert summary["hangs"] == 0
    assert set(summary["errors_by_kind"]) <= CLEAR_ERRORS[fault]
    assert summary["server_connections_peak"] <= summary["server_connection_bound"]
    assert summary["max_recovery_s"] <= chaos.RECOVERY_LIMIT_S


def test_database_down_gives_clear_errors_then_recovers(stack, room):
    socket = ChatSocket(stack.app_url, room, "alice", timeout=chaos.REPLY_TIMEOUT_S)
    stack.stop("pgbouncer")
    try:
        reply = socket.post("while PgBouncer is down", "down-1")
        assert reply["type"] == "error"
        assert reply["code"] == "unavailable"
        assert "nothing was stored" in reply["message"]
        health = ChatHttp(stack.app_url).request("GET", "/healthz")
        assert health.status == 503
        newcomer = ChatSocket(stack.app_url, room, "bob", timeout=chaos.REPLY_TIMEOUT_S)
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


def test_pooled_connections_survive_a_pgbouncer_restart(stack, django_app):
    """The pool's check (chat_site/postgresql/base.py) notices the dead sockets and reconnects."""
    from django.db import connection

    from chat_site.postgresql.base import check_connection_when_disturbed

    assert connection.pool._check is check_connection_when_disturbed
    connection.pool.resize(min_size=1, max_size=4)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
    connection.close()  # back to the pool, where PgBouncer's restart will break it
    stack.restart("pgbouncer")
    for _ in range(8):  # every pooled connection in turn
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        connection.close()
