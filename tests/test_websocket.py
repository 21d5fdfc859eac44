"""The WebSocket protocol against the real Daphne processes, Redis and PgBouncer."""

import uuid

import pytest
import websocket

from probes.chat import ChatSocket


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
    acks, limited = 0, 0
    while acks + limited < 300:
        frame = flooder.receive()
        if frame["type"] == "ack":
            acks += 1
        elif frame["type"] == "error":
            assert frame["code"] == "rate_limited"
            limited += 1
    assert limited > 0
    stored = owner_db.execute(
        "SELECT count(*) FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s AND m.author = 'flooder'",
        [room],
    ).fetchone()[0]
    assert stored == acks  # every refused frame left nothing behind
    flooder.close()
    bystander.close()
