"""The chat's database work, shared by the HTTP views and the WebSocket consumer.

Every function runs in autocommit (ATOMIC_REQUESTS is off): a statement's
transaction ends with the statement, so PgBouncer gets its server connection
back at once, and a returned row is already committed.
"""

from django.db import IntegrityError, connection

from chat.models import Message, Room

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

    One statement on the common path, committed when this returns: INSERT ... ON
    CONFLICT DO NOTHING RETURNING. Only when it returns nothing (a resend) does a
    second one read the row stored first, which is committed by then: an INSERT
    that meets an uncommitted row with the same key waits for its transaction.
    Without a client_id, a plain INSERT: such messages are never deduplicated.
    Raw SQL through Django's cursor: client-side binding, autocommit, no
    server-side cursor, like every other statement behind PgBouncer.
    """
    fields = {"room_id": room_id, "author": author, "text": text, "client_id": client_id}
    with connection.cursor() as cursor:
        conflict = _ON_CONFLICT if client_id else ""
        cursor.execute(_INSERT + conflict + _RETURNING, [room_id, author, text, client_id])
        row = cursor.fetchone()
        if row is not None:
            return Message(id=row[0], created_at=row[1], **fields), False
        cursor.execute(_EXISTING, [room_id, client_id])
        row = cursor.fetchone()
    if row is None:  # messages go only with their room: it was deleted in between
        raise IntegrityError(f"message {client_id!r} conflicts in room {room_id}, which no longer has it")
    message_id, stored_author, stored_text, created_at = row
    fields.update(author=stored_author, text=stored_text)
    return Message(id=message_id, created_at=created_at, **fields), True


def latest_messages(room_id: int, limit: int) -> list[dict]:
    """The room's last ``limit`` messages, oldest first."""
    newest_first = Message.objects.filter(room_id=room_id).order_by("-id")[:limit]
    return [message.as_dict() for message in reversed(newest_first)]
