"""A "Connections" tab in Locust's web UI: the number the load test exists to prove.

Locust's own tabs show requests. This one shows, while a test runs, PostgreSQL's
server connections of the app role and PgBouncer's waiting clients against the
bound, as a table and a chart. The master (or a standalone run) samples them once
a second with the load test's connection monitor (loadtest/monitor.py), for as
long as the web UI is up, from the monitor's own settings: MONITOR_POSTGRES_DSN
and MONITOR_PGBOUNCER_DSN, their passwords in MONITOR_*_PASSWORD_FILE. Without
them the tab says so. Headless runs and workers have no web UI: nothing here runs.

Locust 2.47's web UI is extended the way its examples/extend_web_ui.py does:
template_args' extended_tabs and extended_tables declare the tab and its table,
and the table's rows ride in /stats/requests' extended_stats, which the UI polls
while a test runs. That API draws tables only, so the chart is a small script of
ours (web_ui_connections.js, served from ./connections/chart.js and added to the
index page) that draws ./connections/data as SVG above the table: no CDN, it
works offline.
"""

import json
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import gevent
from flask import Blueprint, Response, jsonify, request
from locust import events
from locust.env import Environment
from locust.web import WebUI

from loadtest.monitor import ConnectionMonitor, MonitorDsns
from probes.connections import APP_ROLE

TAB = "connections"
SAMPLE_EVERY_S = 1.0
CHART_WINDOW_S = 300  # the chart's last five minutes, one sample a second
CHART_SCRIPT = Path(__file__).with_suffix(".js")
SETTINGS_HINT = (
    "No connection monitor: set MONITOR_POSTGRES_DSN (a pg_monitor role, straight to PostgreSQL) and "
    "MONITOR_PGBOUNCER_DSN (a stats_users role on PgBouncer's console), passwords in "
    "MONITOR_POSTGRES_PASSWORD_FILE and MONITOR_PGBOUNCER_PASSWORD_FILE, then restart Locust."
)
# The table's columns; the chart's script finds the table by its "bound" column.
MEASURES = (
    ("server_connections", f"PostgreSQL server connections ({APP_ROLE})"),
    ("clients_waiting", "PgBouncer clients waiting"),
    ("clients_active", "PgBouncer clients active"),
    ("maxwait_s", "PgBouncer longest wait (s)"),
)
COLUMNS = (
    {"key": "measure", "title": "Measure"},
    {"key": "now", "title": "Now"},
    {"key": "peak", "title": "Peak this test"},
    {"key": "bound", "title": "Bound"},
)


@events.init.add_listener
def add_connections_tab(environment: Environment, web_ui: WebUI | None = None, **_kwargs) -> None:
    if web_ui is None:
        return
    dsns = MonitorDsns.from_env()
    if dsns is None:
        _declare_tab(web_ui, [{"key": "hint", "title": "Connections"}], lambda: [{"hint": SETTINGS_HINT}])
        return
    feed = ConnectionFeed(ConnectionMonitor(dsns))
    environment.events.test_start.add_listener(feed.reset_peaks)
    environment.events.quitting.add_listener(feed.stop)
    _declare_tab(web_ui, list(COLUMNS), feed.table_rows)
    _serve_chart(web_ui, feed)


class ConnectionFeed:
    """The monitor's readings, one a second in a greenlet from now until Locust quits."""

    def __init__(self, monitor: ConnectionMonitor):
        self.monitor = monitor
        # Connected before any user is: a leaking app cannot lock the monitor out later.
        self.monitor.open()
        self.bound, self.bound_source = monitor.bound_or_reason()
        self.readings: deque[dict] = deque(maxlen=int(CHART_WINDOW_S / SAMPLE_EVERY_S))
        self.peaks: dict[str, int] = {}
        self.greenlet = gevent.spawn(self._sample_every_second)

    def _sample_every_second(self) -> None:
        next_tick = time.monotonic()
        while True:
            reading = as_reading(self.monitor.sample())
            self.readings.append(reading)
            for key, _title in MEASURES:
                if reading[key] is not None:
                    self.peaks[key] = max(self.peaks.get(key, 0), reading[key])
            next_tick += SAMPLE_EVERY_S
            gevent.sleep(max(0.0, next_tick - time.monotonic()))

    def reset_peaks(self, **_kwargs) -> None:
        self.peaks = {}

    def stop(self, **_kwargs) -> None:
        """At quit: the greenlet first, so no sample reopens what close() closes."""
        self.greenlet.kill()
        self.monitor.close()

    def latest(self) -> dict:
        return self.readings[-1] if self.readings else as_reading({})

    def table_rows(self) -> list[dict]:
        now = self.latest()
        return [
            {
                "measure": title,
                "now": _shown(now[key]),
                "peak": _shown(self.peaks.get(key)),
                "bound": _shown(self.bound) if key == "server_connections" else "",
            }
            for key, title in MEASURES
        ]

    def data(self) -> dict:
        return {
            "role": APP_ROLE,
            "bound": self.bound,
            "bound_source": self.bound_source,
            "now": self.latest(),
            "peak": self.peaks,
            "window_s": CHART_WINDOW_S,
            "readings": list(self.readings),
        }


def as_reading(sample: dict) -> dict:
    """One monitor sample as the tab shows it; None where the monitor had no answer."""
    pool = sample.get("pgbouncer_pool") or {}
    return {
        "time": time.time(),  # seconds since the epoch: the chart's x axis, in the browser's clock
        "server_connections": sample.get("app_server_connections"),
        "clients_waiting": pool.get("cl_waiting"),
        "clients_active": pool.get("cl_active"),
        "maxwait_s": pool.get("maxwait"),
    }


def _shown(value: int | None) -> int | str:
    return "no reading" if value is None else value


def _declare_tab(web_ui: WebUI, columns: list[dict], rows: Callable[[], list[dict]]) -> None:
    """The tab and its table in the UI's template arguments (update_template_args keeps
    keys it does not set), and the table's rows in every /stats/requests answer."""
    web_ui.template_args["extended_tabs"] = [{"title": "Connections", "key": TAB}]
    web_ui.template_args["extended_tables"] = [{"key": TAB, "structure": columns}]

    @web_ui.app.after_request
    def add_rows(response: Response) -> Response:
        if request.endpoint == "locust.request_stats" and response.status_code == 200:
            report = {**response.json, "extended_stats": [{"key": TAB, "data": rows()}]}
            response.set_data(json.dumps(report))
        return response


def _serve_chart(web_ui: WebUI, feed: ConnectionFeed) -> None:
    # Under Locust's own --web-base-path, as its pages are.
    base_path = getattr(web_ui.environment.parsed_options, "web_base_path", "")
    routes = Blueprint("connections", __name__, url_prefix=base_path or None)

    @routes.route(f"/{TAB}/data")
    @web_ui.auth_required_if_enabled
    def connections_data() -> Response:
        return jsonify(feed.data())

    @routes.route(f"/{TAB}/chart.js")
    @web_ui.auth_required_if_enabled
    def connections_chart() -> Response:
        return Response(CHART_SCRIPT.read_text(), mimetype="text/javascript")

    web_ui.app.register_blueprint(routes)
    script = f'<script src="./{TAB}/chart.js" defer></script></body>'

    @web_ui.app.after_request
    def add_chart_script(response: Response) -> Response:
        # The index page's paths are relative (./assets/...), so are ours: a --web-base-path works.
        if request.endpoint == "locust.index" and response.status_code == 200:
            response.set_data(response.get_data(as_text=True).replace("</body>", script, 1))
        return response
