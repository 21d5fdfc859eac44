"""End-to-end check of a running native stack: `make demo` runs it after `make up`.

Creates a room, chats over two WebSockets, finds the acknowledged row in
PostgreSQL, and checks that the app role's only server connections are
PgBouncer's. Exits non-zero, naming the failed check, when anything is off.
"""

import sys
import time
import uuid

import psycopg

from native.stack import Stack
from pooled_postgres.observe import pgbouncer_show
from probes.chat import ChatHttp, ChatSocket
from probes.connections import app_role_backend_pids, connection_bound


def check(stack: Stack) -> list[str]:
    """Run the checks; return one line per check passed. Raises AssertionError on failure."""
    done = []
    http = ChatHttp(stack.app_url)
    health = http.request("GET", "/healthz")
    assert health.status == 200, f"/healthz answered {health.status}: {health.body}"
    done.append("/healthz is 200: a query made the round trip through PgBouncer")

    http.ensure_room("lobby", "Lobby")
    alice = ChatSocket(stack.app_url, "lobby", "alice")
    bob = ChatSocket(stack.app_url, "lobby", "bob")
    client_id = uuid.uuid4().hex
    ack = alice.post(f"hello from make demo at {time.strftime('%H:%M:%S')}", client_id)
    assert ack["type"] == "ack", f"no acknowledgement: {ack}"
    broadcast = bob.receive_until("message")
    assert broadcast["id"] == ack["id"], f"bob got message {broadcast['id']}, expected {ack['id']}"
    alice.close()
    bob.close()
    done.append(f"WebSocket: alice's message acknowledged as id {ack['id']}, broadcast to bob")

    with psycopg.connect(stack.dsn("chat_owner", through_pgbouncer=False)) as owner:
        row = owner.execute("SELECT client_id FROM chat_message WHERE id = %s", [ack["id"]]).fetchone()
    assert row == (client_id,), f"message {ack['id']} is not in PostgreSQL"
    done.append(f"PostgreSQL has row {ack['id']} (read straight from PostgreSQL as chat_owner)")

    with (
        psycopg.connect(stack.dsn("chat_monitor", through_pgbouncer=False), autocommit=True) as monitor,
        psycopg.connect(
            stack.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"), autocommit=True
        ) as console,
    ):
        backends = app_role_backend_pids(monitor)
        pgbouncer_servers = {row["remote_pid"] for row in pgbouncer_show(console, "SERVERS")}
    strays = backends - pgbouncer_servers
    assert not strays, f"chat_app backends not opened by PgBouncer: {sorted(strays)}"
    bound = connection_bound()
    assert len(backends) <= bound, f"{len(backends)} chat_app backends, bound {bound}"
    done.append(f"PostgreSQL: {len(backends)} chat_app connection(s), all PgBouncer's (bound {bound})")
    return done


def main() -> int:
    stack = Stack()
    try:
        for line in check(stack):
            print(f"  ok  {line}")
    except (AssertionError, OSError, psycopg.Error) as failure:
        print(f"FAILED: {failure}", file=sys.stderr)
        return 1
    print(
        f"\nThe stack is up. Open {stack.app_url}/ to chat; logs are in {stack.path('logs')};"
        "\n`make down` stops it."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
