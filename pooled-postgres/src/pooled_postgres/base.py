"""Django's PostgreSQL backend, with a pool health check that costs a round trip only when needed.

With CONN_HEALTH_CHECKS on, Django hands psycopg_pool its stock check, which sends
an empty query through PgBouncer before every checkout: a second round trip per
WebSocket message on the process's one database thread (`make bench` measures
what it costs: config pooled-djangopool+query-check). Without any check, a
PgBouncer restart fails the first query on every pooled connection. This check
looks at the socket instead: an idle connection has nothing to read, and a server
that went away (PgBouncer restarted, PostgreSQL killed the session) leaves it
readable (EOF or an error message). Only then does it run the stock check, which
discards the dead connection.

A server that went away for one pooled connection went away for all of them, and
psycopg_pool waits 1, 2, 4 s between failed checks within one checkout: four
dead connections discarded one at a time outlast the pool's 5 s timeout, and the
request fails although PgBouncer is back. So the first dead connection found
makes the pool check all its idle ones at once (`ConnectionPool.check()`).
"""

import select

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


def check_connection_when_disturbed(conn: psycopg.Connection) -> None:
    """psycopg_pool `check`: raise if the connection is dead, with a query only if in doubt."""
    if conn.closed:
        raise psycopg.OperationalError("the connection is closed")
    poller = select.poll()  # not select.select: Daphne's descriptors go past FD_SETSIZE
    poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    if poller.poll(0):
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.Error:
            if isinstance(pool := getattr(conn, "_pool", None), ConnectionPool):
                pool.check()  # discards its other dead connections now, and reconnects
            raise


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self):
        pool = super().pool
        # Django passes its check as a constructor argument, with no setting to
        # change it; swap it before the pool hands out its first connection.
        if pool is not None and pool._check is ConnectionPool.check_connection:
            pool._check = check_connection_when_disturbed
        return pool
