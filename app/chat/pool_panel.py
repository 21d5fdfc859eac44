"""The demo's pool panel (CHAT_SHOW_POOL): the app role's PostgreSQL server connections against
the bound PgBouncer promises, counted through the app's own path to the database.

Many open pages poll it: each process asks PostgreSQL at most once per CACHE_S and answers
everyone else from that, so the cost is per process, not per page.
"""

import threading
import time

from django.conf import settings
from django.db import connection

CACHE_S = 1.0

# The app role's backends in its database: reached only through PgBouncer, those are the
# server connections PgBouncer holds for the app's pool, which never exceed the bound. The
# backend answering this query is one of them, so N >= 1 whenever PostgreSQL answers. A
# configuration that reaches PostgreSQL directly (native profile `naive`) has its own
# connections counted here too, as they should be: they are what goes over the bound.
COUNT_SERVER_CONNECTIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE usename = current_user AND datname = current_database()"
)


class CachedCount:
    """The last count and when it was taken; one query at a time per process."""

    def __init__(self, max_age_s: float):
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._taken_at = float("-inf")
        self._connections = 0

    def status(self) -> dict:
        """{"connections": N, "bound": B}; raises DatabaseError, and caches nothing, when
        the database does not answer."""
        with self._lock:
            if time.monotonic() - self._taken_at >= self.max_age_s:
                with connection.cursor() as cursor:
                    cursor.execute(COUNT_SERVER_CONNECTIONS)
                    (self._connections,) = cursor.fetchone()
                self._taken_at = time.monotonic()
            return {"connections": self._connections, "bound": settings.CHAT_POOL_BOUND}


server_connections = CachedCount(CACHE_S)
