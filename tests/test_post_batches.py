"""Posts stored in batches (chat/posting.py) against the real stack.

Posts that come while a database call runs are stored by the next one, together: one
statement, one transaction. Each still gets its own answer, as if it had been stored
alone: its own row and id, the original's id for a client_id sent twice, and its own
error when only it fails. (The order of a socket's messages, and the ack only after the
commit, are tested with the batches on everywhere else: tests/test_websocket.py,
test_database_threads.py, test_message_checks.py.)
"""

import uuid

from app_processes import served_by
from held_posts import posts_held_back
from pipelined import answers

from probes.chat import ChatHttp, ChatSocket


def stored(owner_db, room: str) -> list[tuple[str, int, str]]:
    """(client_id, id, the id of the transaction that stored it) of every message in the room."""
    return owner_db.execute(
        "SELECT m.client_id, m.id, m.xmin::text FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s ORDER BY m.id",
        [room],
    ).fetchall()


def test_posts_that_wait_together_are_stored_by_one_transaction(stack, room, owner_db, monitor_db):
    tag = uuid.uuid4().hex[:8]
    members = {f"writer{n}": (room, f"writer{n}") for n in range(6)}
    members["anonymous"] = (room, "anonymous")  # no client_id: matched to its row by order
    with posts_held_back(stack, owner_db, monitor_db, members) as held:
        for name, socket in held.sockets.items():
            client_id = "" if name == "anonymous" else f"{name}-{tag}"
            socket.send({"type": "message", "text": f"from {name}", "client_id": client_id})
        held.wait_until_waiting(len(members))

    acked = {}
    for socket in held.sockets.values():
        (answer,) = answers(socket, 1)
        assert answer["type"] == "ack" and "duplicate" not in answer, answer
        acked[answer["client_id"]] = answer["id"]
        socket.close()
    rows = stored(owner_db, room)
    assert {client_id: message_id for client_id, message_id, _ in rows} == acked  # each its own row
    assert len({transaction for _, _, transaction in rows}) == 1


def test_one_client_id_sent_twice_in_a_batch_is_stored_once(stack, room, owner_db, monitor_db):
    client_id = f"twice-{uuid.uuid4().hex[:8]}"
    with posts_held_back(
        stack, owner_db, monitor_db, {"alice": (room, "alice"), "bob": (room, "bob")}
    ) as held:
        for socket in held.sockets.values():
            socket.send({"type": "message", "text": "one message, two sockets", "client_id": client_id})
        held.wait_until_waiting(2)

    acks = [answers(socket, 1)[0] for socket in held.sockets.values()]
    for socket in held.sockets.values():
        socket.close()
    assert {(ack["type"], ack["client_id"]) for ack in acks} == {("ack", client_id)}
    (row,) = stored(owner_db, room)
    assert [ack["id"] for ack in acks] == [row[1], row[1]]
    assert sorted(ack.get("duplicate", False) for ack in acks) == [False, True]  # stored once, resent once


def test_a_post_whose_room_is_deleted_meanwhile_fails_alone(stack, room, owner_db, monitor_db):
    doomed = f"t-doomed-{uuid.uuid4().hex[:8]}"
    ChatHttp(stack.app_url).ensure_room(doomed)
    members = {"doomed": (doomed, "alice"), "survivor": (room, "bob")}
    with posts_held_back(stack, owner_db, monitor_db, members) as held:
        for name, socket in held.sockets.items():
            socket.send({"type": "message", "text": "hello", "client_id": f"{name}-1"})
        held.wait_until_waiting(2)
        owner_db.execute("DELETE FROM chat_room WHERE slug = %s", [doomed])

    (refused,) = answers(held.sockets["doomed"], 1)
    assert (refused["type"], refused["code"], refused["client_id"]) == ("error", "unavailable", "doomed-1")
    (ack,) = answers(held.sockets["survivor"], 1)
    assert (ack["type"], ack["client_id"]) == ("ack", "survivor-1")
    assert [(client_id, message_id) for client_id, message_id, _ in stored(owner_db, room)] == [
        ("survivor-1", ack["id"])
    ]
    for socket in held.sockets.values():
        socket.close()


def test_frames_that_need_no_database_are_answered_while_a_database_call_is_stuck(
    stack, room, owner_db, monitor_db
):
    """A frame refused before any database work, and a broadcast from a socket of another
    process, reach a socket whose process has its database call stuck behind a lock:
    the consumer makes no hop to the database thread before each handler, as Channels'
    own dispatch does (chat/consumers.py, RoomConsumer.dispatch)."""
    with posts_held_back(stack, owner_db, monitor_db, {"bob": (room, "bob")}) as held:
        bob = held.sockets["bob"]
        bob.send("not json")
        assert bob.receive()["code"] == "invalid_json"
        with served_by(stack, stack.daphne_pids()[1]):
            alice = ChatSocket(stack.app_url, room, "alice")
        ack = alice.post("while bob's process waits", "alice-1")
        broadcast = bob.receive()
        assert (broadcast["type"], broadcast["id"], broadcast["author"]) == ("message", ack["id"], "alice")
    alice.close()
    bob.close()
