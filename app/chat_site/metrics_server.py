"""The app's metrics at http://APP_METRICS_BIND:APP_METRICS_PORT/metrics, added up over its Daphne processes.

Run by supervisord beside the Daphne processes (app/supervisord.conf, program
`metrics`), with the same PROMETHEUS_MULTIPROC_DIR: each Daphne process writes its
values to files there, named by its pid (chat/metrics.py), and every scrape reads
them all (prometheus_client's MultiProcessCollector). So Prometheus has one target
per host however many processes run, and a counter keeps what a process counted
after that process is gone. A separate port, so the metrics are never served on
Daphne's, which the proxy forwards.

Needs no Django: it only reads the files.
"""

import glob
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

PATH = "/metrics"
SETTINGS = ("PROMETHEUS_MULTIPROC_DIR", "APP_METRICS_BIND", "APP_METRICS_PORT")


class LiveProcessesCollector:
    """MultiProcessCollector, after dropping the per-process gauges of processes that are gone.

    supervisord restarts a Daphne process that died; the new one has a new pid, and
    the old one's liveall gauges (its open WebSockets, its pool) would stay in the
    sum forever. Its counters stay: what it counted happened.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.merged = MultiProcessCollector(None, path=directory)

    def collect(self):
        for pid in gone_pids(self.directory):
            mark_process_dead(pid, self.directory)
        return self.merged.collect()


def gone_pids(directory: str) -> set[int]:
    """The pids of live-gauge files (gauge_live<mode>_<pid>.db) whose process no longer exists."""
    files = glob.glob(os.path.join(directory, "gauge_live*_*.db"))
    pids = {int(path.rsplit("_", 1)[1].removesuffix(".db")) for path in files}
    return {pid for pid in pids if not process_exists(pid)}


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only whether the pid exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user
        pass
    return True


def metrics_only(app):
    """The metrics at PATH, 404 anywhere else."""

    def serve(environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"not found: the metrics are at {PATH}\n".encode()]
        return app(environ, start_response)

    return serve


class QuietHandler(WSGIRequestHandler):
    """No line per request: Prometheus scrapes every few seconds, forever."""

    def log_message(self, format, *args):
        pass


def main() -> None:
    missing = [name for name in SETTINGS if not os.environ.get(name)]
    if missing:
        sys.exit(f"metrics: {', '.join(missing)} not set (app/entrypoint.sh sets them)")
    directory, bind, port = (os.environ[name] for name in SETTINGS)
    if not port.isdigit():
        sys.exit(f"metrics: APP_METRICS_PORT must be a port number, not {port!r}")
    registry = CollectorRegistry()
    registry.register(LiveProcessesCollector(directory))
    server = make_server(
        bind, int(port), metrics_only(make_wsgi_app(registry)), ThreadingWSGIServer, QuietHandler
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
