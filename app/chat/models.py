from django.db import models


class Room(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    title = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    def as_dict(self) -> dict:
        return {"slug": self.slug, "title": self.title, "created_at": self.created_at.isoformat()}


class Message(models.Model):
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    author = models.CharField(max_length=40)
    text = models.TextField()
    client_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["room", "-id"], name="message_room_latest")]
        constraints = [
            # client_id is the sender's idempotency key: a resend is stored once. The
            # partial unique index is built by migration 0002 (concurrently, in SQL).
            models.UniqueConstraint(
                fields=["room", "client_id"],
                condition=~models.Q(client_id=""),
                name="message_room_client_id_once",
            )
        ]

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "text": self.text,
            "author": self.author,
            "created_at": self.created_at.isoformat(),
        }


class Ban(models.Model):
    """An author who may not post in a room. Read before every message is stored when
    CHAT_MESSAGE_CHECKS is on (chat/store.py); rows are written by the room's moderators
    (today: in SQL, there is no API for them)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="bans")
    author = models.CharField(max_length=40)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # Also the index the per-message lookup (room, author) uses.
        constraints = [models.UniqueConstraint(fields=["room", "author"], name="ban_room_author_once")]
