"""Django's connection pool (psycopg_pool, OPTIONS["pool"]) as Prometheus metrics.

A daemon thread in each Daphne process copies the pool's get_stats() into the
metrics every SAMPLE_INTERVAL_S. Sampling rather than updating on every database
call keeps the cost off the message path (`make bench` counts CPU per message):
one get_stats() a second per process, whatever the load. A scrape every 15 s
sees values at most a second old. Without a pool (DATABASE_POOL_MAX_SIZE=0) no
thread starts and no chat_db_pool_* series exists.
"""

import logging
import threading
import time

from django.db import DEFAULT_DB_ALIAS, connections
from prometheus_client import Counter, Gauge

logger = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 1.0


# get_stats() key -> (metric, help). Measures of the moment, per process.
GAUGES = {
    "pool_size": ("chat_db_pool_size", "Connections in Django's pool: idle, in use and being made"),
    "pool_available": ("chat_db_pool_available", "Idle connections in Django's pool"),
    "pool_max": ("chat_db_pool_max", "Most connections Django's pool may hold"),
    "requests_waiting": ("chat_db_pool_requests_waiting", "Requests waiting for a connection from the pool"),
}
# get_stats() key -> (metric, help, the key's units in one of the metric's). Counted
# by psycopg_pool over the pool's life: each sample adds what they grew by since the last.
COUNTERS = {
    "requests_num": ("chat_db_pool_requests", "Connections requested from the pool", 1),
    "requests_wait_ms": ("chat_db_pool_requests_wait_seconds", "Time requests waited for a connection", 1000),
    "requests_errors": ("chat_db_pool_timeouts", "Requests that got no connection in the pool's timeout", 1),
    "connections_lost": ("chat_db_pool_connections_lost", "Broken connections the pool discarded", 1),
}


class PoolMetrics:
    """The metrics of one process's pool; update() takes a get_stats() dict."""

    def __init__(self):
        # Made only when there is a pool: a metric exists (as 0) from its creation. Not
        # registered: under multiprocess mode the metrics program reads the files.
        self.gauges = {
            key: Gauge(name, documentation, multiprocess_mode="liveall", registry=None)
            for key, (name, documentation) in GAUGES.items()
        }
        self.counters = {
            key: (Counter(name, documentation, registry=None), per_unit)
            for key, (name, documentation, per_unit) in COUNTERS.items()
        }
        self.pool = None
        self.seen: dict[str, int] = {}

    def update(self, pool, stats: dict[str, int]) -> None:
        if pool is not self.pool:
            # A new pool (Django closes and remakes it when the database's time zone
            # changes) counts from zero.
            self.pool, self.seen = pool, {}
        for key, metric in self.gauges.items():
            metric.set(stats.get(key, 0))
        for key, (metric, per_unit) in self.counters.items():
            value = stats.get(key, 0)  # psycopg_pool leaves out a counter still at 0
            if grown := value - self.seen.get(key, 0):
                metric.inc(grown / per_unit)
            self.seen[key] = value


def start_sampling() -> None:
    """Start this process's sampler thread, if the default database has a pool."""
    # Django creates the pool object here if nothing has yet; it stays closed until the
    # first query opens it, and reports its configured size meanwhile.
    if connections[DEFAULT_DB_ALIAS].pool is not None:
        sampler = threading.Thread(
            target=_sample_forever, args=(PoolMetrics(),), name="pool-metrics", daemon=True
        )
        sampler.start()


def _sample_forever(metrics: PoolMetrics) -> None:
    while True:
        try:
            pool = connections[DEFAULT_DB_ALIAS].pool
            metrics.update(pool, pool.get_stats())
        except Exception:  # a failed sample must not end the sampling
            logger.exception("sampling Django's connection pool failed")
        time.sleep(SAMPLE_INTERVAL_S)
