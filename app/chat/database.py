"""How the WebSocket consumer's database calls leave the event loop (CHAT_DATABASE_THREADS).

0, the default: Channels' ``database_sync_to_async``, thread-sensitive. A Daphne
process has one such thread, so a call for one socket waits for every call queued
before it, whichever socket made them.

N > 0: a pool of N threads per process, made once at import (Daphne imports the
consumer once per process). Calls for different sockets run at once, up to N; a
socket's own calls still run one after the other, in the order its frames came,
because the consumer awaits each before it reads the next frame. The calls go
through Channels' own ``DatabaseSyncToAsync``, only on these threads: it closes
the thread's connection before and after every call (``close_old_connections``;
with CONN_MAX_AGE=0 that hands it back to Django's pool), so no connection outlives
its call, exactly as with the default. settings.py refuses more threads than the
pool has connections, and no pool at all.
"""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from django.conf import settings

THREADS = settings.CHAT_DATABASE_THREADS
# Never shut down: the threads end with the process, after finishing the calls they run
# (concurrent.futures joins them at exit, as it does Channels' own thread).
EXECUTOR = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="chat-database") if THREADS else None


def database_call(function: Callable) -> Callable:
    """``function`` as an awaitable that runs on a database thread, its connection closed after."""
    if EXECUTOR is None:
        return database_sync_to_async(function)
    return DatabaseSyncToAsync(function, thread_sensitive=False, executor=EXECUTOR)
