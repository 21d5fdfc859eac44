"""The chat's database work, shared by the HTTP views and the WebSocket consumer.

Every function but the checked ones runs in autocommit (ATOMIC_REQUESTS is off): a
statement's transaction ends with the statement, so PgBouncer gets its server
connection back at once. add_message_checked and add_messages_checked are one
transaction each, committed before they return: a returned row is already committed,
whichever stored it.

The consumer stores its posts in batches (chat/posting.py): add_messages and
add_messages_checked do for many posts, in a handful of statements, what add_message
and add_message_checked do for one, with the same answers post by post.
"""

from typing import NamedTuple

from django.db import IntegrityError, connection, transaction

from chat.models import Ban, Message, Room


class Post(NamedTuple):
    room_id: int
    author: str
    text: str
    client_id: str


class PostingForbidden(Exception):
    """The author may not post in the room: nothing was stored."""


# A post's answer: (its message, whether it was stored before), or what refused it alone.
Outcome = tuple[Message, bool] | PostingForbidden | IntegrityError

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
# Many posts in one statement, an array per column, as Django's bulk_create does on
# PostgreSQL. RETURNING gives the rows inserted (not those ON CONFLICT skipped) in the
# order of the arrays, which Django relies on too; here only the rows without a
# client_id need it, the others are matched by their key.
_INSERT_MANY = (
    "INSERT INTO chat_message (room_id, author, text, client_id, created_at) "
    "SELECT room_id, author, text, client_id, now() "
    "FROM unnest(%s::bigint[], %s::varchar[], %s::text[], %s::varchar[]) "
    "AS post(room_id, author, text, client_id)"
    + _ON_CONFLICT
    + " RETURNING id, created_at, room_id, client_id"
)
# "m.client_id <> ''" on the table's column, as in _EXISTING: the partial index then serves
# the join, one index lookup per post (on the unnest's column, it is a scan of each room).
_EXISTING_MANY = (
    "SELECT m.id, m.created_at, m.room_id, m.client_id, m.author, m.text "
    "FROM unnest(%s::bigint[], %s::varchar[]) AS sent(room_id, client_id) "
    "JOIN chat_message m ON m.room_id = sent.room_id AND m.client_id = sent.client_id "
    "WHERE m.client_id <> ''"
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
        raise _room_gone(Post(room_id, author, text, client_id))
    return existing, True


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
    connection for several round trips (BEGIN, two SELECTs, INSERT, COMMIT) instead
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


def add_messages(posts: list[Post]) -> list[Outcome]:
    """add_message for each post, in one statement for them all (two when some were sent before).

    Autocommit: the rows are committed when this returns. A client_id sent twice in the
    batch (two sockets, one message) is stored once, by the first post of it; the other
    is answered as its resend. An error of the statement as a whole is raised: nothing
    of the batch was stored, unless it came after the commit (a broken connection),
    which is why `unavailable` says to send again with the same client_id.
    """
    return _alone_if_one_breaks_the_batch(_store_many, add_message, posts)


def add_messages_checked(posts: list[Post]) -> list[Outcome]:
    """add_message_checked for each post, in one transaction for them all: one read of the
    resends, one ban lookup and one INSERT, whatever the number of posts."""
    return _alone_if_one_breaks_the_batch(_store_many_checked, add_message_checked, posts)


def _alone_if_one_breaks_the_batch(store_many, store_one, posts: list[Post]) -> list[Outcome]:
    """``store_many(posts)``; if one row breaks a constraint (its room was deleted meanwhile),
    which fails the whole statement, each post again on its own, so only that one fails."""
    try:
        return store_many(posts)
    except IntegrityError:
        outcomes: list[Outcome] = []
        for post in posts:
            try:
                outcomes.append(store_one(*post))
            except (IntegrityError, PostingForbidden) as error:
                outcomes.append(error)
        return outcomes


def _store_many(posts: list[Post]) -> list[Outcome]:
    """The posts' rows inserted; a post whose key is stored already (before, or earlier in
    ``posts``) answered with that row."""
    seen: set[tuple[int, str]] = set()
    new: list[Post] = []  # the first post of each client_id, and every post without one
    for post in posts:
        if post.client_id:
            if (post.room_id, post.client_id) in seen:
                continue
            seen.add((post.room_id, post.client_id))
        new.append(post)
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_MANY, [list(column) for column in zip(*new, strict=True)])
        returned = cursor.fetchall()
        stored = {
            (room_id, client_id): (message_id, created_at)
            for message_id, created_at, room_id, client_id in returned
            if client_id
        }
        unkeyed = iter(
            [(message_id, created_at) for message_id, created_at, _, client_id in returned if not client_id]
        )
        resent = [post for post in new if post.client_id and (post.room_id, post.client_id) not in stored]
        existing = _existing_many(cursor, resent) if resent else {}
    answers: dict[tuple[int, str], Outcome] = {}
    outcomes: list[Outcome] = []
    for post in posts:
        key = (post.room_id, post.client_id)
        if not post.client_id:
            message_id, created_at = next(unkeyed)
            outcomes.append((Message(id=message_id, created_at=created_at, **post._asdict()), False))
        elif key in answers:  # the second post of one client_id in this batch
            first = answers[key]
            outcomes.append((first[0], True) if isinstance(first, tuple) else first)
        else:
            if key in stored:
                message_id, created_at = stored[key]
                answers[key] = (Message(id=message_id, created_at=created_at, **post._asdict()), False)
            elif key in existing:
                answers[key] = (existing[key], True)
            else:  # it conflicted with a row that is gone now: its room was deleted in between
                answers[key] = _room_gone(post)
            outcomes.append(answers[key])
    return outcomes


def _store_many_checked(posts: list[Post]) -> list[Outcome]:
    with transaction.atomic():
        with connection.cursor() as cursor:
            keyed = [post for post in posts if post.client_id]
            existing = _existing_many(cursor, keyed) if keyed else {}
        rooms, authors = {post.room_id for post in posts}, {post.author for post in posts}
        banned = set(
            Ban.objects.filter(room_id__in=rooms, author__in=authors).values_list("room_id", "author")
        )
        outcomes: list[Outcome | None] = []
        to_store: list[int] = []
        for post in posts:
            if post.client_id and (post.room_id, post.client_id) in existing:
                outcomes.append((existing[post.room_id, post.client_id], True))
            elif (post.room_id, post.author) in banned:
                outcomes.append(PostingForbidden(f"{post.author!r} may not post in this room"))
            else:
                to_store.append(len(outcomes))
                outcomes.append(None)
        if to_store:
            for index, outcome in zip(
                to_store, _store_many([posts[index] for index in to_store]), strict=True
            ):
                outcomes[index] = outcome
    return outcomes


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


def _existing_many(cursor, posts: list[Post]) -> dict[tuple[int, str], Message]:
    """The messages stored under the posts' (room, client_id), committed, by that key."""
    cursor.execute(_EXISTING_MANY, [[post.room_id for post in posts], [post.client_id for post in posts]])
    return {
        (room_id, client_id): Message(
            id=message_id,
            created_at=created_at,
            room_id=room_id,
            client_id=client_id,
            author=author,
            text=text,
        )
        for message_id, created_at, room_id, client_id, author, text in cursor.fetchall()
    }


def _room_gone(post: Post) -> IntegrityError:
    return IntegrityError(
        f"message {post.client_id!r} conflicts in room {post.room_id}, which no longer has it"
    )


def latest_messages(room_id: int, limit: int) -> list[dict]:
    """The room's last ``limit`` messages, oldest first."""
    newest_first = Message.objects.filter(room_id=room_id).order_by("-id")[:limit]
    return [message.as_dict() for message in reversed(newest_first)]
