"""CHAT_MESSAGE_CHECKS against the real stack: before storing a message, a read (is this
client_id stored already?) and a permission lookup (is the author banned from the room?),
in one transaction with the insert.

A banned author's message is refused with a clear error frame and not stored; everything
else keeps the protocol's guarantees: an ack only after the commit, in the order sent,
each message stored once under its client_id. Run with the database calls on the one
thread and on CHAT_DATABASE_THREADS, which `make bench` combines with the checks.
"""

import uuid

import pytest
from held_posts import posts_held_back
from pipelined import acks_in_order, answers, pipeline, resend

from native.profiles import SHIPPED
from probes.chat import ChatHttp, ChatSocket

UNLIMITED = {"CHAT_RATE_PER_S": "10000", "CHAT_RATE_BURST": "10000"}


def ban(owner_db, room: str, author: str) -> None:
    """As the room's moderators would: a row in chat_ban (there is no API for it)."""
    owner_db.execute(
        "INSERT INTO chat_ban (room_id, author, created_at) "
        "SELECT id, %s, now() FROM chat_room WHERE slug = %s",
        [author, room],
    )


def stored(owner_db, room: str) -> list[tuple[str, str, int]]:
    """(author, client_id, id) of every message in the room, in the order stored."""
    return owner_db.execute(
        "SELECT m.author, m.client_id, m.id FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s ORDER BY m.id",
        [room],
    ).fetchall()


def test_without_the_checks_no_ban_is_read(stack, room, owner_db):
    """The default stores as before: one INSERT, no lookup, so a ban changes nothing."""
    assert stack.running_app() == (SHIPPED, {})
    ban(owner_db, room, "mallory")
    socket = ChatSocket(stack.app_url, room, "mallory")
    assert socket.post("not checked", "unchecked-1")["type"] == "ack"
    socket.close()


@pytest.fixture(
    scope="module",
    params=[{}, {"CHAT_DATABASE_THREADS": "4"}],
    ids=["one-database-thread", "database-threads"],
)
def checked_app(stack, request):
    stack.restart_app(SHIPPED, {"CHAT_MESSAGE_CHECKS": "true", **UNLIMITED, **request.param})
    try:
        yield stack
    finally:
        stack.restart_app(SHIPPED)


def test_a_banned_author_is_refused_and_nothing_is_stored(checked_app, room, owner_db):
    ban(owner_db, room, "mallory")
    mallory = ChatSocket(checked_app.app_url, room, "mallory")
    alice = ChatSocket(checked_app.app_url, room, "alice")

    for client_id in ("banned-1", "banned-2"):  # every message, and the socket stays open
        refused = mallory.post("let me in", client_id)
        assert refused == {
            "type": "error",
            "code": "forbidden",
            "message": "you may not post in this room; the message was not stored",
            "client_id": client_id,
        }
    assert alice.post("still here", "allowed-1")["type"] == "ack"  # the ban is mallory's only
    assert [author for author, _, _ in stored(owner_db, room)] == ["alice"]

    elsewhere = f"t-{uuid.uuid4().hex[:12]}"  # and in this room only
    ChatHttp(checked_app.app_url).ensure_room(elsewhere)
    mallory_elsewhere = ChatSocket(checked_app.app_url, elsewhere, "mallory")
    assert mallory_elsewhere.post("hello", "banned-1")["type"] == "ack"
    for socket in (mallory, alice, mallory_elsewhere):
        socket.close()


def test_a_resend_of_a_message_stored_before_the_ban_is_answered_with_its_id(checked_app, room, owner_db):
    """The answer to a resend is the truth, ban or not: the message is stored."""
    socket = ChatSocket(checked_app.app_url, room, "mallory")
    first = socket.post("before the ban", "early-1")
    assert first["type"] == "ack"
    ban(owner_db, room, "mallory")
    again = socket.post("before the ban", "early-1")
    assert again == {"type": "ack", "id": first["id"], "client_id": "early-1", "duplicate": True}
    assert socket.post("after the ban", "late-1")["code"] == "forbidden"
    assert stored(owner_db, room) == [("mallory", "early-1", first["id"])]
    socket.close()


def test_messages_are_acknowledged_in_order_and_stored_once(checked_app, room, owner_db):
    per_socket = 30
    sockets = {f"writer{n}": ChatSocket(checked_app.app_url, room, f"writer{n}") for n in range(4)}
    sent = pipeline(sockets, per_socket)
    acked = acks_in_order(sockets, sent)

    resend(sockets, sent)  # every message again, as a client that lost its acks would
    for name, socket in sockets.items():
        frames = answers(socket, per_socket)
        assert [(frame["id"], frame.get("duplicate")) for frame in frames] == [(i, True) for i in acked[name]]
        socket.close()

    rows = stored(owner_db, room)
    assert len(rows) == 4 * per_socket
    for name in sockets:
        mine = [(client_id, message_id) for author, client_id, message_id in rows if author == name]
        assert mine == list(zip(sent[name], acked[name], strict=True))


def test_messages_without_a_client_id_are_stored_every_time(checked_app, room, owner_db):
    socket = ChatSocket(checked_app.app_url, room, "alice")
    acks = [socket.post("same again", "") for _ in range(2)]
    assert [ack["type"] for ack in acks] == ["ack", "ack"]
    assert acks[0]["id"] != acks[1]["id"]
    assert len(stored(owner_db, room)) == 2
    socket.close()


def test_in_a_batch_a_banned_author_is_refused_alone_and_a_resend_answered_with_its_id(
    checked_app, room, owner_db, monitor_db
):
    """The checks read once for a whole batch (chat/store.py, add_messages_checked); each post
    still gets its own answer."""
    alice = ChatSocket(checked_app.app_url, room, "alice")
    first = alice.post("before the batch", "early-1")
    alice.close()
    ban(owner_db, room, "mallory")
    members = {"mallory": (room, "mallory"), "alice": (room, "alice"), "bob": (room, "bob")}
    posts = {"mallory": "banned-1", "alice": "early-1", "bob": "bob-1"}
    with posts_held_back(checked_app, owner_db, monitor_db, members) as held:
        for name, socket in held.sockets.items():
            socket.send({"type": "message", "text": f"from {name}", "client_id": posts[name]})
        held.wait_until_waiting(len(members))

    got = {name: answers(socket, 1)[0] for name, socket in held.sockets.items()}
    for socket in held.sockets.values():
        socket.close()
    assert got["mallory"] == {
        "type": "error",
        "code": "forbidden",
        "message": "you may not post in this room; the message was not stored",
        "client_id": "banned-1",
    }
    assert got["alice"] == {"type": "ack", "id": first["id"], "client_id": "early-1", "duplicate": True}
    assert got["bob"]["type"] == "ack"
    assert stored(owner_db, room) == [("alice", "early-1", first["id"]), ("bob", "bob-1", got["bob"]["id"])]


def test_in_a_batch_a_deleted_room_fails_alone_and_the_others_keep_their_own_answers(
    checked_app, room, owner_db, monitor_db
):
    """The deleted room's row fails the batch's INSERT as a whole; each post is then stored
    again on its own (chat/store.py, _alone_if_one_breaks_the_batch), with the checks."""
    alice = ChatSocket(checked_app.app_url, room, "alice")
    first = alice.post("before the batch", "early-1")
    alice.close()
    ban(owner_db, room, "mallory")
    doomed = f"t-doomed-{uuid.uuid4().hex[:8]}"
    ChatHttp(checked_app.app_url).ensure_room(doomed)
    members = {
        "doomed": (doomed, "carol"),
        "mallory": (room, "mallory"),
        "alice": (room, "alice"),
        "bob": (room, "bob"),
    }
    posts = {"doomed": "doomed-1", "mallory": "banned-1", "alice": "early-1", "bob": "bob-1"}
    with posts_held_back(checked_app, owner_db, monitor_db, members) as held:
        for name, socket in held.sockets.items():
            socket.send({"type": "message", "text": f"from {name}", "client_id": posts[name]})
        held.wait_until_waiting(len(members))
        owner_db.execute("DELETE FROM chat_room WHERE slug = %s", [doomed])

    got = {name: answers(socket, 1)[0] for name, socket in held.sockets.items()}
    for socket in held.sockets.values():
        socket.close()
    assert (got["doomed"]["type"], got["doomed"]["code"], got["doomed"]["client_id"]) == (
        "error",
        "unavailable",
        "doomed-1",
    )
    assert (got["mallory"]["type"], got["mallory"]["code"]) == ("error", "forbidden")
    assert got["alice"] == {"type": "ack", "id": first["id"], "client_id": "early-1", "duplicate": True}
    assert got["bob"]["type"] == "ack"
    assert stored(owner_db, room) == [("alice", "early-1", first["id"]), ("bob", "bob-1", got["bob"]["id"])]
