"""The chat's database work, shared by the HTTP views and the WebSocket consumer.

Every function runs in autocommit (ATOMIC_REQUESTS is off): a statement's
transaction ends with the statement, so PgBouncer gets its server connection
back at once, and a returned row is already committed.
"""

from chat.models import Message, Room


def find_room(slug: str) -> Room | None:
    return Room.objects.filter(slug=slug).first()


def list_rooms(limit: int) -> list[dict]:
    return [room.as_dict() for room in Room.objects.order_by("slug")[:limit]]


def add_message(room_id: int, author: str, text: str, client_id: str) -> Message:
    """Insert one message; it is committed when this returns (INSERT ... RETURNING)."""
    return Message.objects.create(room_id=room_id, author=author, text=text, client_id=client_id)


def latest_messages(room_id: int, limit: int) -> list[dict]:
    """The room's last ``limit`` messages, oldest first."""
    newest_first = Message.objects.filter(room_id=room_id).order_by("-id")[:limit]
    return [message.as_dict() for message in reversed(newest_first)]
