"""The WebSocket protocol against the real Daphne processes, Redis and PgBouncer."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import websocket

from native.profiles import SHIPPED
from probes.chat import ChatHttp, ChatSocket

APP = Path(__file__).resolve().parent.parent / "app"


def test_connect_gets_a_ready_frame(stack, room):
    socket = ChatSocket(stack.app_url, room, "alice")
    assert socket.ready == {"type": "ready", "room": room, "author": "alice"}
    socket.close()


def test_message_is_acknowledged_after_it_is_stored(stack, room, owner_db):
    socket = ChatSocket(stack.app_url, room, "alice")
    client_id = uuid.uuid4().hex
    ack = socket.post("hello", client_id)
    assert ack == {"type": "ack", "id": ack["id"], "client_id": client_id}
    stored = owner_db.execute(
        "SELECT m.text, m.author, m.client_id FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE m.id = %s AND r.slug = %s",
        [ack["id"], room],
    ).fetchone()
    assert stored == ("hello", "alice", client_id)
    socket.close()


def test_every_member_gets_the_broadcast_whichever_process_serves_it(stack, room):
    # Two Daphne processes share the socket; with six members both almost surely
    # serve some, and the Redis channel layer must reach all of them.
    members = [ChatSocket(stack.app_url, room, f"member{n}") for n in range(6)]
    ack = members[0].post("to everyone", "c1")
    for member in members:
        broadcast = member.receive_until("message")
        assert broadcast["id"] == ack["id"]
        assert broadcast["text"] == "to everyone"
        assert broadcast["author"] == "member0"
        member.close()


def test_history_returns_the_last_messages_oldest_first(stack, room):
    socket = ChatSocket(stack.app_url, room, "alice")
    ids = [socket.post(f"m{n}", f"c{n}")["id"] for n in range(5)]
    socket.send({"type": "history", "limit": 3})
    history = socket.receive_until("history")
    assert [m["id"] for m in history["messages"]] == ids[-3:]
    assert [m["text"] for m in history["messages"]] == ["m2", "m3", "m4"]
    socket.close()


def test_unknown_room_gets_an_error_frame_then_close_4404(stack):
    socket = ChatSocket(stack.app_url, "no-such-room", "alice")
    assert socket.ready["type"] == "error"
    assert socket.ready["code"] == "room_not_found"
    assert socket.close_code() == 4404


def test_invalid_name_gets_close_4400(stack, room):
    socket = ChatSocket(stack.app_url, room, "x" * 41)
    assert socket.ready["code"] == "invalid_name"
    assert socket.close_code() == 4400


@pytest.mark.parametrize("origin", ["http://evil.example", None])
def test_foreign_or_missing_origin_is_refused_at_the_handshake(stack, room, origin):
    options = {"origin": origin} if origin else {"suppress_origin": True}
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        ChatSocket(stack.app_url, room, "mallory", **options)
    assert refused.value.status_code == 403


def test_a_flooding_client_is_rate_limited_while_others_are_served(stack, room, owner_db):
    flooder = ChatSocket(stack.app_url, room, "flooder")
    bystander = ChatSocket(stack.app_url, room, "bystander")
    for n in range(300):
        flooder.send({"type": "message", "text": f"flood {n}", "client_id": f"f{n}"})
    ack = bystander.post("still served", "b1")
    assert ack["type"] == "ack"
    acks, limited, answered = 0, 0, []
    while acks + limited < 300:
        frame = flooder.receive()
        if frame["type"] == "ack":
            acks += 1
        elif frame["type"] == "error":
            assert frame["code"] == "rate_limited"
            limited += 1
        if frame["type"] in ("ack", "error"):
            answered.append(frame["client_id"])
    assert limited > 0
    assert sorted(answered) == sorted(f"f{n}" for n in range(300))  # each frame answered once, by name
    stored = owner_db.execute(
        "SELECT count(*) FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s AND m.author = 'flooder'",
        [room],
    ).fetchone()[0]
    assert stored == acks  # every refused frame left nothing behind
    flooder.close()
    bystander.close()


def new_client_id() -> str:
    return f"c-{uuid.uuid4().hex}"


def rows_with_client_id(owner_db, room, client_id) -> list[tuple]:
    return owner_db.execute(
        "SELECT m.id, m.text FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s AND m.client_id = %s ORDER BY m.id",
        [room, client_id],
    ).fetchall()


def test_a_resend_is_stored_once_and_answered_with_the_original_id(stack, room, owner_db):
    alice = ChatSocket(stack.app_url, room, "alice")
    bob = ChatSocket(stack.app_url, room, "bob")
    client_id = new_client_id()
    first = alice.post("hello once", client_id)
    assert first == {"type": "ack", "id": first["id"], "client_id": client_id}
    again = alice.post("hello once", client_id)  # e.g. its ack was lost with the connection
    assert again == {"type": "ack", "id": first["id"], "client_id": client_id, "duplicate": True}
    after = alice.post("after the resend", new_client_id())
    # Alice's consumer handles her frames one after the other, so a broadcast of the
    # resend would reach bob between the two; bob gets nothing but broadcasts.
    assert bob.receive()["id"] == first["id"]
    assert bob.receive()["id"] == after["id"]
    assert rows_with_client_id(owner_db, room, client_id) == [(first["id"], "hello once")]
    alice.close()
    bob.close()


def test_the_same_client_id_sent_on_two_sockets_at_once_is_stored_once(stack, room, owner_db):
    """A client that reconnected and resends while the first frame may still be in flight."""
    senders = [ChatSocket(stack.app_url, room, "alice") for _ in range(2)]
    bob = ChatSocket(stack.app_url, room, "bob")
    client_id = new_client_id()
    for sender in senders:
        sender.send({"type": "message", "text": "sent twice", "client_id": client_id})
    acks = [sender.receive_until("ack") for sender in senders]
    assert acks[0]["id"] == acks[1]["id"]
    assert sorted(ack.get("duplicate", False) for ack in acks) == [False, True]
    # A consumer broadcasts before it handles its socket's next frame: once bob has
    # both markers, any broadcast of "sent twice" has reached him.
    markers = {sender.post("marker", new_client_id())["id"] for sender in senders}
    seen = []
    while not markers <= set(seen):
        seen.append(bob.receive()["id"])
    assert seen.count(acks[0]["id"]) == 1
    assert rows_with_client_id(owner_db, room, client_id) == [(acks[0]["id"], "sent twice")]
    for socket in [*senders, bob]:
        socket.close()


def test_the_same_client_id_in_two_rooms_is_two_messages(stack, room, owner_db):
    other = f"t-{uuid.uuid4().hex[:12]}"
    ChatHttp(stack.app_url).ensure_room(other)
    client_id = new_client_id()
    acks = []
    for slug in (room, other):
        socket = ChatSocket(stack.app_url, slug, "alice")
        acks.append(socket.post("one per room", client_id))
        socket.close()
    assert [ack["type"] for ack in acks] == ["ack", "ack"]
    assert not any("duplicate" in ack for ack in acks)
    assert acks[0]["id"] != acks[1]["id"]
    assert rows_with_client_id(owner_db, room, client_id) == [(acks[0]["id"], "one per room")]
    assert rows_with_client_id(owner_db, other, client_id) == [(acks[1]["id"], "one per room")]


INDEX = "message_room_client_id_once"


def migrate(stack, *target: str) -> None:
    """What the stack's migrate step runs: manage.py migrate as chat_owner, straight to PostgreSQL."""
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **stack.app_env(SHIPPED)}
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", *target, "--database", "direct", "--no-input"],
        cwd=APP,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def client_id_index(owner_db) -> tuple | None:
    """(valid, unique, definition) of the idempotency index, None when there is none."""
    return owner_db.execute(
        "SELECT indisvalid, indisunique, pg_get_indexdef(indexrelid) FROM pg_index "
        "WHERE indexrelid = to_regclass(%s)",
        [INDEX],
    ).fetchone()


def test_the_unique_index_migration_keeps_every_message_of_a_table_with_duplicates(stack, room, owner_db):
    room_id = owner_db.execute("SELECT id FROM chat_room WHERE slug = %s", [room]).fetchone()[0]
    legacy = [
        ("first", "dup-a"),
        ("second", "dup-a"),
        ("other", "dup-b"),
        ("third", "dup-a"),
        ("again", "dup-b"),
        ("single", "solo"),
        ("no id", ""),
        ("no id either", ""),
    ]
    try:
        migrate(stack, "chat", "0001")
        assert client_id_index(owner_db) is None
        ids = [
            owner_db.execute(
                "INSERT INTO chat_message (room_id, author, text, client_id, created_at) "
                "VALUES (%s, 'legacy', %s, %s, now()) RETURNING id",
                [room_id, text, client_id],
            ).fetchone()[0]
            for text, client_id in legacy
        ]
        # What an interrupted earlier attempt leaves: the concurrent build meets the
        # duplicates, fails, and leaves an INVALID index under the migration's name.
        with pytest.raises(psycopg.errors.UniqueViolation):
            owner_db.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON chat_message (room_id, client_id) "
                "WHERE client_id <> ''"
            )
        assert client_id_index(owner_db)[:2] == (False, True)
        migrate(stack)
    finally:
        migrate(stack)  # never leave the session's database without the index
    valid, unique, definition = client_id_index(owner_db)
    assert (valid, unique) == (True, True)
    assert definition.endswith("(room_id, client_id) WHERE ((client_id)::text <> ''::text)")
    stored = owner_db.execute(
        "SELECT id, text, client_id FROM chat_message WHERE room_id = %s ORDER BY id", [room_id]
    ).fetchall()
    # Nothing deleted; the first of each pair keeps its client_id, the later ones are blanked.
    assert [row[0] for row in stored] == ids
    assert [row[1:] for row in stored] == [
        ("first", "dup-a"),
        ("second", ""),
        ("other", "dup-b"),
        ("third", ""),
        ("again", ""),
        ("single", "solo"),
        ("no id", ""),
        ("no id either", ""),
    ]
    # The app's INSERT ... ON CONFLICT finds the new index as its arbiter.
    socket = ChatSocket(stack.app_url, room, "legacy")
    resent = socket.post("first", "dup-a")
    assert resent == {"type": "ack", "id": ids[0], "client_id": "dup-a", "duplicate": True}
    fresh = socket.post("new", "dup-new")
    assert fresh == {"type": "ack", "id": fresh["id"], "client_id": "dup-new"}
    assert rows_with_client_id(owner_db, room, "dup-new") == [(fresh["id"], "new")]
    socket.close()
