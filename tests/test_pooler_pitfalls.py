"""What transaction pooling breaks, proven against the real PgBouncer rather than assumed.

In transaction mode PgBouncer may give each transaction a different server
connection. These tests force that to happen (another client holds the server
connection the app just used, so PgBouncer must hand out another one) and show
which of Django's features survive with the shipped settings.
"""

import copy
from contextlib import nullcontext

import psycopg
import pytest


@pytest.fixture
def messages(django_app, room):
    from chat.models import Message, Room

    room_row = Room.objects.get(slug=room)
    for n in range(5):
        Message.objects.create(room=room_row, author="test", text=f"message {n}")
    return Message.objects.filter(room=room_row).order_by("id")


def database_alias(**overrides):
    """A connection like the shipped 'default' with some settings changed."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper

    settings_dict = copy.deepcopy(connections["default"].settings_dict)
    settings_dict["OPTIONS"].pop("pool", None)  # a plain connection, to isolate the setting
    settings_dict.update(overrides)
    alias = "pitfall-" + "-".join(f"{key}={value}" for key, value in overrides.items())
    connections[alias] = DatabaseWrapper(settings_dict, alias=alias)
    return alias


def test_iterator_works_through_pgbouncer_with_the_shipped_settings(messages, open_transactions):
    from django.db import connections

    assert connections["default"].settings_dict["DISABLE_SERVER_SIDE_CURSORS"] is True
    rows = messages.iterator(chunk_size=1)
    first = next(rows)
    with open_transactions():
        rest = list(rows)
    assert [first.text, *(m.text for m in rest)] == [f"message {n}" for n in range(5)]


def test_iterator_breaks_when_server_side_cursors_are_enabled(messages, open_transactions):
    """The expected failure, made explicit: why DISABLE_SERVER_SIDE_CURSORS is True."""
    from django.db import ProgrammingError

    # Raised by psycopg from the FETCH (Django does not wrap it here); either is the failure.
    cursor_gone = (ProgrammingError, psycopg.errors.InvalidCursorName)
    alias = database_alias(DISABLE_SERVER_SIDE_CURSORS=False)
    rows = messages.using(alias).iterator(chunk_size=1)
    next(rows)  # DECLARE ... CURSOR WITH HOLD, then the first FETCH, on server connection A
    with open_transactions(), pytest.raises(cursor_gone, match=r"cursor .* does not exist"):
        list(rows)  # the next FETCH runs on server connection B, which never saw the cursor


def test_repeated_query_raises_no_prepared_statement_error(messages, open_transactions):
    """psycopg prepares a query after 5 runs by default; Django turns that off (client-side binding)."""
    from django.db import connection

    backend_pids = set()
    for n in range(12):
        # Taking the last-used server connection every other time moves Django's
        # connection from one server connection to another, back and forth.
        with open_transactions() if n % 2 else nullcontext():
            assert messages.filter(text="message 3").count() == 1
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend_pids.add(cursor.fetchone()[0])
    assert connection.connection.prepare_threshold is None
    assert "server_side_binding" not in connection.settings_dict["OPTIONS"]
    # Not vacuous: the same query really ran on more than one server connection.
    assert len(backend_pids) > 1


def test_django_sends_no_session_set_on_connect(django_app):
    """PostgreSQL already reports UTC, so Django skips SET TIME ZONE (a session SET through the pooler)."""
    from django.db import connection

    connection.ensure_connection()
    assert connection.connection.info.parameter_status("TimeZone") == "UTC"
    assert connection._configure_connection(connection.connection) is False  # nothing to SET


def test_app_settings_follow_the_transaction_pooling_rules(django_app):
    from django.conf import settings

    default = settings.DATABASES["default"]
    assert default["CONN_MAX_AGE"] == 0
    assert default["ATOMIC_REQUESTS"] is False
    assert default["CONN_HEALTH_CHECKS"] is True
    assert default["PORT"] == django_app.DATABASES["default"]["PORT"]  # PgBouncer's, from DATABASE_URL
    assert "pool" in default["OPTIONS"]  # shipped: Django's pool in front of PgBouncer


def test_postgresql_sees_only_pgbouncer_connections_for_the_app_role(
    stack, room, monitor_db, pgbouncer_console
):
    from pooled_postgres.observe import pgbouncer_show
    from probes.chat import ChatSocket
    from probes.connections import app_role_backend_pids, connection_bound

    sockets = [ChatSocket(stack.app_url, room, f"user{n}") for n in range(4)]
    for n, socket in enumerate(sockets):
        assert socket.post("hello", f"c{n}")["type"] == "ack"
    backends = app_role_backend_pids(monitor_db)
    pgbouncer_servers = {row["remote_pid"] for row in pgbouncer_show(pgbouncer_console, "SERVERS")}
    for socket in sockets:
        socket.close()
    assert backends, "the app's work must have reached PostgreSQL"
    assert backends <= pgbouncer_servers
    assert len(backends) <= connection_bound()


def test_server_side_prepared_statements_need_pgbouncer_support(
    stack, pgbouncer_console, open_transactions, leaves_prepared_statements
):
    """Why client-side binding: psycopg's own prepared statements across server connections.

    PgBouncer < 1.21 (Debian 12 ships 1.18) does not track them, so the statement
    prepared on one server connection is missing on the next; 1.24 tracks them when
    max_prepared_statements > 0 (its default is 200).
    """
    from pooled_postgres.observe import pgbouncer_show

    config = {row["key"]: row["value"] for row in pgbouncer_show(pgbouncer_console, "CONFIG")}
    tracked = int(config.get("max_prepared_statements", "0")) > 0
    # A statement that fails ("does not exist", "already exists") or, worse, answers with
    # another query's result (a server connection holding another _pg3_0) is a failure.
    failures = 0
    dsn = stack.dsn("chat_app", through_pgbouncer=True)
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        for n in range(6):
            with open_transactions() if n % 2 else nullcontext():
                try:
                    failures += conn.execute("SELECT %s::int", [n]).fetchone() != (n,)
                except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement):
                    failures += 1
    assert (failures == 0) if tracked else (failures > 0)
