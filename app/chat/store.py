"""The chat's database work, shared by the HTTP views and the WebSocket consumer.

Every function but add_message_checked runs in autocommit (ATOMIC_REQUESTS is
off): a statement's transaction ends with the statement, so PgBouncer gets its
server connection back at once. add_message_checked is one transaction, committed
before it returns: a returned row is already committed, whichever stored it.
"""

from django.db import IntegrityError, connection, transaction

from chat.models import Ban, Message, Room

_INSERT = (
    "INSERT INTO chat_message (room_id, author, text, client_id, created_at) VALUES (%s, %s, %s, %s, now())"
)
# The conflict target names the partial unique index of migration 0002 (its columns
# and its predicate): PostgreSQL picks that index as the arbiter.
_ON_CONFLICT = " ON CONFLICT (room_id, client_id) WHERE client_id <> '' DO NOTHING"
_RETURNING = " RETURNING id, created_at"
# The resent message's row; "client_id <> ''" lets the planner use the same partial index.
_EXISTING = (
    "SELECT id, author, text, created_at FROM chat_message "
    "WHERE room_id = %s AND client_id = %s AND client_id <> ''"
)


def find_room(slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


def list_rooms(limit: int) -> list[dict]:
    return [room.as_dict() for room in Room.objects.order_by("slug")[:limit]]


def add_message(room_id: int, author: str, text: str, client_id: str) -> tuple[Message, bool]:
    """Store one message, at most once per (room, client_id); return it and whether it was there already.

    One statement on the common path, committed when this returns (or, called in
    add_message_checked's transaction, when that ends): INSERT ... ON CONFLICT DO
    NOTHING RETURNING. Only when it returns nothing (a resend) does a
    second one read the row stored first, which is committed by then: an INSERT
    that meets an uncommitted row with the same key waits for its transaction.
    Without a client_id, a plain INSERT: such messages are never deduplicated.
    Raw SQL through Django's cursor: client-side binding, autocommit, no
    server-side cursor, like every other statement behind PgBouncer.
    """
    with connection.cursor() as cursor:
        conflict = _ON_CONFLICT if client_id else ""
        cursor.execute(_INSERT + conflict + _RETURNING, [room_id, author, text, client_id])
        row = cursor.fetchone()
        if row is not None:
            fields = {"room_id": room_id, "author": author, "text": text, "client_id": client_id}
            return Message(id=row[0], created_at=row[1], **fields), False
        existing = _existing(cursor, room_id, client_id)
    if existing is None:  # messages go only with their room: it was deleted in between
        raise IntegrityError(f"message {client_id!r} conflicts in room {room_id}, which no longer has it")
    return existing, True


class PostingForbidden(Exception):
    """The author may not post in the room: nothing was stored."""


def add_message_checked(room_id: int, author: str, text: str, client_id: str) -> tuple[Message, bool]:
    """add_message, after the checks a real handler makes first (CHAT_MESSAGE_CHECKS).

    A read and a permission lookup before the write: a resend of a stored message is
    found by its client_id and answered as before; otherwise an author banned from
    the room is refused with PostingForbidden. The resend comes first because its
    answer has to be the truth: the message is stored, ban or not. The INSERT keeps
    its ON CONFLICT, which still settles two sockets sending one client_id at once.

    One call (one thread hop, one connection from the pool) and one transaction, as
    a Django handler would write it (transaction.atomic around check-then-create):
    the checks and the write stand or fall together, and the caller acknowledges
    only after the COMMIT. The price, which the realistic-database scenario of
    `make bench` measures, is that the transaction holds a PgBouncer server
    connection for five round trips (BEGIN, two SELECTs, INSERT, COMMIT) instead
    of one. The ban lookup goes through the ORM, as in most handlers; it is an index
    lookup (ban_room_author_once).
    """
    with transaction.atomic():
        if client_id:
            with connection.cursor() as cursor:
                existing = _existing(cursor, room_id, client_id)
            if existing is not None:
                return existing, True
        if Ban.objects.filter(room_id=room_id, author=author).exists():
            raise PostingForbidden(f"{author!r} may not post in this room")
        return add_message(room_id, author, text, client_id)


def _existing(cursor, room_id: int, client_id: str) -> Message | None:
    """The message stored in the room under this client_id, committed, if any."""
    cursor.execute(_EXISTING, [room_id, client_id])
    row = cursor.fetchone()
    if row is None:
        return None
    message_id, author, text, created_at = row
    return Message(
        id=message_id, room_id=room_id, author=author, text=text, client_id=client_id, created_at=created_at
    )


def latest_messages(room_id: int, limit: int) -> list[dict]:
    """The room's last ``limit`` messages, oldest first."""
    newest_first = Message.objects.filter(room_id=room_id).order_by("-id")[:limit]
    return [message.as_dict() for message in reversed(newest_first)]
