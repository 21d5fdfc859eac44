"""The chat's database work, shared by the HTTP views and the WebSocket consumer.

Every function but the checked one runs in autocommit (ATOMIC_REQUESTS is off): a
statement's transaction ends with the statement, so PgBouncer gets its server
connection back at once. add_messages_checked is one transaction, committed before it
returns: a returned row is already committed, whichever stored it.

The consumer stores its posts in batches (chat/posting.py): add_messages and
add_messages_checked store many posts in a handful of statements, and answer each
post as if it had been stored alone. Raw SQL through Django's cursor: client-side
binding, autocommit, no server-side cursor, like every other statement behind
PgBouncer.
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

# The conflict target names the partial unique index of migration 0002 (its columns
# and its predicate): PostgreSQL picks that index as the arbiter.
_ON_CONFLICT = " ON CONFLICT (room_id, client_id) WHERE client_id <> '' DO NOTHING"
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
# The resent messages' rows. "m.client_id <> ''" on the table's column lets the planner use
# the same partial index: it serves the join, one index lookup per post (on the unnest's
# column, it is a scan of each room).
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


def add_messages(posts: list[Post]) -> list[Outcome]:
    """Store each post at most once per (room, client_id): its message, and whether it was there already.

    One statement for them all, INSERT ... ON CONFLICT DO NOTHING RETURNING; only when
    it skips some (resends) does a second one read the rows stored first, which are
    committed by then: an INSERT that meets an uncommitted row with the same key waits
    for its transaction. Posts without a client_id are never deduplicated.

    Autocommit: the rows are committed when this returns. A client_id sent twice in the
    batch (two sockets, one message) is stored once, by the first post of it; the other
    is answered as its resend. An error of the statement as a whole is raised: nothing
    of the batch was stored, unless it came after the commit (a broken connection),
    which is why `unavailable` says to send again with the same client_id.
    """
    return _alone_if_one_breaks_the_batch(_store_many, posts)


def add_messages_checked(posts: list[Post]) -> list[Outcome]:
    """add_messages, after the checks a real handler makes first (CHAT_MESSAGE_CHECKS).

    A read and a permission lookup before the write, once for the whole batch: a resend
    of a stored message is found by its client_id and answered as before; otherwise an
    author banned from the room is refused with PostingForbidden, that post alone. The
    resend comes first because its answer has to be the truth: the message is stored,
    ban or not. The INSERT keeps its ON CONFLICT, which still settles two sockets
    sending one client_id at once.

    One call (one thread hop, one connection from the pool) and one transaction, as a
    Django handler would write it (transaction.atomic around check-then-create): the
    checks and the write stand or fall together, and the caller acknowledges only
    after the COMMIT. The price, which the realistic-database scenario of `make bench`
    measures, is that the transaction holds a PgBouncer server connection for several
    round trips (BEGIN, two SELECTs, INSERT, COMMIT) instead of one. The ban lookup
    goes through the ORM, as in most handlers; it is an index lookup
    (ban_room_author_once).
    """
    return _alone_if_one_breaks_the_batch(_store_many_checked, posts)


def _alone_if_one_breaks_the_batch(store_many, posts: list[Post]) -> list[Outcome]:
    """``store_many(posts)``; if one row breaks a constraint (its room was deleted meanwhile),
    which fails the whole statement, each post again in a batch of its own (its own
    transaction), so only that one fails, with that error as its answer."""
    try:
        return store_many(posts)
    except IntegrityError:
        outcomes: list[Outcome] = []
        for post in posts:
            try:
                (outcome,) = store_many([post])
            except IntegrityError as error:
                outcome = error
            outcomes.append(outcome)
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
