"""The consumer in this process (channels.testing.WebsocketCommunicator), through PgBouncer.

Bad input of every kind gets a documented error frame, the connection keeps
working, and nothing is stored for a frame that was refused.
"""

import json

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture
def application(django_app):
    from chat_site.asgi import application

    return application


def communicator(application, room, name="tester"):
    from channels.testing import WebsocketCommunicator

    return WebsocketCommunicator(
        application, f"/ws/rooms/{room}/?name={name}", headers=[(b"origin", b"http://127.0.0.1")]
    )


async def connected(application, room):
    socket = communicator(application, room)
    accepted, _ = await socket.connect()
    assert accepted
    assert (await socket.receive_json_from(timeout=5))["type"] == "ready"
    return socket


async def post(socket, text, client_id="c"):
    await socket.send_json_to({"type": "message", "text": text, "client_id": client_id})
    while True:  # skip the broadcast of our own message if it comes first
        frame = await socket.receive_json_from(timeout=5)
        if frame["type"] in ("ack", "error"):
            return frame


def stored_count(owner_db, room):
    return owner_db.execute(
        "SELECT count(*) FROM chat_message m JOIN chat_room r ON r.id = m.room_id WHERE r.slug = %s", [room]
    ).fetchone()[0]


async def test_message_ack_carries_the_stored_id(application, room, owner_db):
    socket = await connected(application, room)
    ack = await post(socket, "hello", "c1")
    assert ack["type"] == "ack"
    assert ack["client_id"] == "c1"
    broadcast = await socket.receive_json_from(timeout=5)
    assert broadcast["type"] == "message"
    assert broadcast["id"] == ack["id"]
    assert stored_count(owner_db, room) == 1
    await socket.disconnect()


BAD_FRAMES = [
    ("not json", "invalid_json"),
    ('{"type": "message", "text": "unterminated', "invalid_json"),
    ("[1, 2, 3]", "invalid_frame"),
    ('"a string"', "invalid_frame"),
    ("{}", "invalid_frame"),
    ('{"type": "shout", "text": "hi"}', "unknown_type"),
    ('{"type": 7}', "unknown_type"),
    ('{"type": "message"}', "invalid_frame"),
    ('{"type": "message", "text": 42}', "invalid_frame"),
    ('{"type": "message", "text": "   "}', "invalid_frame"),
    ('{"type": "message", "text": "hi", "client_id": 5}', "invalid_frame"),
    ('{"type": "message", "text": "hi", "extra": true}', "invalid_frame"),
    ('{"type": "message", "text": "hi", "client_id": "' + "x" * 65 + '"}', "invalid_frame"),
    ('{"type": "history", "limit": "10"}', "invalid_frame"),
    ('{"type": "history", "limit": 0}', "invalid_frame"),
    ('{"type": "history", "limit": 101}', "invalid_frame"),
]


@pytest.mark.parametrize(("raw", "code"), BAD_FRAMES)
async def test_bad_frame_gets_a_clear_error_and_the_socket_keeps_working(
    application, room, owner_db, raw, code
):
    socket = await connected(application, room)
    await socket.send_to(text_data=raw)
    error = await socket.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    assert stored_count(owner_db, room) == 0  # nothing half-written
    assert (await post(socket, "still here"))["type"] == "ack"
    await socket.disconnect()


async def test_text_over_the_limit_is_refused(application, room, owner_db, django_app):
    socket = await connected(application, room)
    error = await post(socket, "x" * (django_app.CHAT_MAX_TEXT_CHARS + 1))
    assert error["code"] == "invalid_frame"
    assert "longer than" in error["message"]
    assert stored_count(owner_db, room) == 0
    await socket.disconnect()


async def test_oversized_frame_is_refused_before_parsing(application, room, owner_db, django_app):
    socket = await connected(application, room)
    await socket.send_to(text_data=" " * (django_app.CHAT_MAX_FRAME_BYTES + 1))
    error = await socket.receive_json_from(timeout=5)
    assert error["code"] == "frame_too_large"
    assert stored_count(owner_db, room) == 0
    await socket.disconnect()


async def test_binary_frame_is_refused(application, room):
    socket = await connected(application, room)
    await socket.send_to(bytes_data=b"\x00\xff binary")
    error = await socket.receive_json_from(timeout=5)
    assert error["code"] == "binary_not_supported"
    assert (await post(socket, "text works"))["type"] == "ack"
    await socket.disconnect()


async def test_a_flood_is_rate_limited_and_only_acknowledged_messages_are_stored(
    application, room, owner_db, django_app
):
    socket = await connected(application, room)
    sent = django_app.CHAT_RATE_BURST * 2
    for n in range(sent):
        await socket.send_json_to({"type": "message", "text": f"flood {n}", "client_id": str(n)})
    acks, limited = set(), 0
    while len(acks) + limited < sent:
        frame = await socket.receive_json_from(timeout=10)
        if frame["type"] == "ack":
            acks.add(frame["id"])
        elif frame["type"] == "error":
            assert frame["code"] == "rate_limited"
            limited += 1
    assert limited > 0
    assert len(acks) >= django_app.CHAT_RATE_BURST
    assert stored_count(owner_db, room) == len(acks)
    await socket.disconnect()


async def test_every_answer_to_a_flood_names_its_frame(application, room, owner_db, django_app):
    socket = await connected(application, room)
    sent = [f"flood-{n}" for n in range(django_app.CHAT_RATE_BURST * 2)]
    for client_id in sent:
        await socket.send_json_to({"type": "message", "text": client_id, "client_id": client_id})
    acked, limited = [], []
    while len(acked) + len(limited) < len(sent):
        frame = await socket.receive_json_from(timeout=10)
        if frame["type"] == "ack":
            acked.append(frame["client_id"])
        elif frame["type"] == "error":
            assert frame["code"] == "rate_limited"
            limited.append(frame["client_id"])
    assert limited
    assert sorted(acked + limited) == sorted(sent)  # each frame answered once, by its client_id
    stored = owner_db.execute(
        "SELECT m.client_id FROM chat_message m JOIN chat_room r ON r.id = m.room_id WHERE r.slug = %s",
        [room],
    ).fetchall()
    assert sorted(row[0] for row in stored) == sorted(acked)  # a refused frame left nothing behind
    await socket.disconnect()


FRAMES_NAMING_A_CLIENT_ID = [
    ('{"type": "message", "text": "   ", "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "message", "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "message", "text": 42, "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "message", "text": "hi", "client_id": "c-7", "extra": 1}', "invalid_frame", "c-7"),
    ('{"text": "hi", "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "shout", "text": "hi", "client_id": "c-7"}', "unknown_type", "c-7"),
    ('{"type": "history", "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "message", "text": "' + "x" * 2001 + '", "client_id": "c-7"}', "invalid_frame", "c-7"),
    ('{"type": "message", "text": "' + "x" * 9000 + '", "client_id": "c-7"}', "frame_too_large", "c-7"),
    (b'{"type": "message", "text": "hi", "client_id": "c-7"}', "binary_not_supported", "c-7"),
    # Frames whose client_id cannot be read: the error goes out without one.
    ('{"type": "message", "text": "hi", "client_id": "c-7"', "invalid_json", None),
    ('[{"client_id": "c-7"}]', "invalid_frame", None),
    ('{"type": "message", "text": "hi", "client_id": 7}', "invalid_frame", None),
    ('{"type": "message", "text": "hi", "client_id": "' + "x" * 65 + '"}', "invalid_frame", None),
    ('{"type": "message", "text": "   ", "client_id": ""}', "invalid_frame", None),
    ("[" * 30_000 + "]" * 30_000, "frame_too_large", None),  # too deep for json.loads
    # Oversized beyond 8 times CHAT_MAX_FRAME_BYTES: not parsed for its client_id.
    ('{"type": "message", "text": "' + "x" * 70_000 + '", "client_id": "c-7"}', "frame_too_large", None),
]


@pytest.mark.parametrize(("raw", "code", "client_id"), FRAMES_NAMING_A_CLIENT_ID)
async def test_an_error_about_a_frame_carries_its_client_id_when_it_has_one(
    application, room, owner_db, raw, code, client_id
):
    socket = await connected(application, room)
    await socket.send_input({"type": "websocket.receive", "bytes" if isinstance(raw, bytes) else "text": raw})
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", code)
    assert error.get("client_id") == client_id
    assert stored_count(owner_db, room) == 0
    await socket.disconnect()


async def test_messages_without_a_client_id_are_never_deduplicated(application, room, owner_db):
    socket = await connected(application, room)
    await socket.send_json_to({"type": "message", "text": "no id"})
    first = await socket.receive_json_from(timeout=5)
    second = await post(socket, "no id", "")
    assert first == {"type": "ack", "id": first["id"], "client_id": ""}
    assert second == {"type": "ack", "id": second["id"], "client_id": ""}
    assert first["id"] != second["id"]
    assert stored_count(owner_db, room) == 2
    await socket.disconnect()


FIELD_NAMES = ["type", "text", "limit", "client_id", "x"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    frame=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(st.sampled_from(FIELD_NAMES), children, max_size=4)
            ),
            max_leaves=8,
        ).map(json.dumps),
    )
)
def test_fuzzed_frames_never_break_the_consumer(application, room, frame):
    """Whatever arrives, the answer is a well-formed frame and the connection stays usable."""

    async def exchange():
        socket = await connected(application, room)
        # send_input, not send_to: an empty frame is legal on the wire.
        key = "bytes" if isinstance(frame, bytes) else "text"
        await socket.send_input({"type": "websocket.receive", key: frame})
        reply = await socket.receive_json_from(timeout=5)
        assert reply["type"] in {"error", "ack", "history", "message"}
        if reply["type"] == "error":
            assert isinstance(reply["code"], str) and reply["message"]
        if reply["type"] in ("error", "ack") and (client_id := readable_client_id(frame)):
            assert reply["client_id"] == client_id
        assert (await post(socket, "after fuzz", "after"))["type"] == "ack"
        await socket.disconnect()

    async_to_sync(exchange)()


def readable_client_id(frame: str | bytes) -> str:
    """The client_id the protocol promises to echo: a JSON object's string of at most 64 characters."""
    try:
        parsed = json.loads(frame)
    except ValueError:
        return ""
    client_id = parsed.get("client_id") if isinstance(parsed, dict) else None
    return client_id if isinstance(client_id, str) and len(client_id) <= 64 else ""


async def test_a_drain_answers_what_was_received_then_what_comes_and_closes_with_1001(
    application, room, owner_db
):
    """What chat_site/graceful_daphne.py asks of a consumer when its process stops."""
    socket = await connected(application, room)
    await socket.send_json_to({"type": "message", "text": "before the restart", "client_id": "before"})
    await socket.send_input({"type": "server.drain"})  # queued behind the message
    frames = [await socket.receive_json_from(timeout=5) for _ in range(3)]
    # The broadcast comes through the channel layer, before or after `closing`.
    answers = [frame for frame in frames if frame["type"] != "message"]
    assert [frame["type"] for frame in answers] == ["ack", "closing"]
    assert answers[0]["client_id"] == "before"
    await socket.send_json_to({"type": "message", "text": "too late", "client_id": "after"})
    refused = await socket.receive_json_from(timeout=5)
    assert (refused["type"], refused["code"], refused["client_id"]) == ("error", "going_away", "after")
    closed = await socket.receive_output(timeout=5)  # once the client has been quiet for a moment
    assert closed == {"type": "websocket.close", "code": 1001}
    rows = owner_db.execute(
        "SELECT m.client_id FROM chat_message m JOIN chat_room r ON r.id = m.room_id WHERE r.slug = %s",
        [room],
    ).fetchall()
    assert rows == [("before",)]
    await socket.disconnect()
