"""Locust glue: the chat options, the once-a-second monitor, the summary and the gate.

Runs in the process that owns the statistics (standalone, or the master in
distributed mode); workers only forward their WebSocket tallies. Works the same
headless, in the web UI (samples and summary cover the last test started) and
distributed.

The monitor is on when MONITOR_POSTGRES_DSN is set (and MONITOR_PGBOUNCER_DSN for
SHOW POOLS); DSNs come from the environment only, so no password shows in `ps`.
"""

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import gevent
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtest import summary
from loadtest.monitor import ConnectionMonitor, MonitorDsns, SampleLog
from loadtest.room_socket import COUNTERS
from loadtest.scenario import PROGRESS_PREFIX, locust_options

logger = logging.getLogger(__name__)


@events.init_command_line_parser.add_listener
def add_chat_options(parser) -> None:
    group = parser.add_argument_group("chat load test (loadtest/locustfile.py)")
    for item in locust_options():  # defined once, in scenario.py
        group.add_argument(
            item.metadata["flag"],
            type=type(item.default),
            default=item.default,
            choices=item.metadata["choices"],
            help=item.metadata["help"],
        )
    group.add_argument("--results-dir", default="", help="write samples.jsonl/.csv and summary.json here")
    group.add_argument("--run-label", default="", help='the summary\'s "config" (default: the host)')
    group.add_argument("--description", default="", help='the summary\'s "description"')
    group.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")


@events.report_to_master.add_listener
def send_tallies(client_id, data) -> None:
    data["chat_counters"] = dict(COUNTERS)
    COUNTERS.clear()


@events.worker_report.add_listener
def add_tallies(client_id, data) -> None:
    COUNTERS.update(data.get("chat_counters", {}))


@events.init.add_listener
def install_recorder(environment: Environment, **_kwargs) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        RunRecorder(environment)


class RunRecorder:
    """Samples once a second from test start; at quit, writes summary.json and sets the exit code."""

    def __init__(self, environment: Environment):
        self.env = environment
        self.options = environment.parsed_options
        dsns = MonitorDsns.from_env()
        self.monitor = ConnectionMonitor(dsns) if dsns else None
        self.samples: list[dict] = []
        self.log: SampleLog | None = None
        self.sampler: gevent.Greenlet | None = None
        self.started = self.full_load = self.stopped = None
        self.full_load_snapshot: summary.Snapshot | None = None
        self.stopped_snapshot: summary.Snapshot | None = None
        self.bound, self.bound_source = self._bound()
        self.max_connections = None
        events = environment.events
        events.test_start.add_listener(self.on_test_start)
        events.spawning_complete.add_listener(self.on_spawning_complete)
        events.test_stopping.add_listener(self.on_test_stopping)
        events.test_stop.add_listener(self.on_test_stopping)  # a stop without "stopping" first
        events.quitting.add_listener(self.on_quitting)

    def _bound(self) -> tuple[int | None, str]:
        if self.monitor is None:
            return None, "no monitor"
        bound, source = self.monitor.bound_or_reason()
        if bound is None:
            logger.error("%s", source)
        return bound, source

    # --- events ---------------------------------------------------------------------

    def on_test_start(self, **_kwargs) -> None:
        self.started, self.full_load, self.stopped = time.monotonic(), None, None
        self.workers = 0
        self.full_load_snapshot = self.stopped_snapshot = None
        self.samples = []
        COUNTERS.clear()
        if self.monitor is not None:
            self.monitor.open()  # before any user connects: see ConnectionMonitor
            self.max_connections = self.monitor.max_connections()
        if self.options.results_dir:
            if self.log is not None:
                self.log.close()
            self.log = SampleLog(Path(self.options.results_dir))
        if self.sampler is None:
            self.sampler = gevent.spawn(self._sample_every_second)

    def on_spawning_complete(self, **_kwargs) -> None:
        if isinstance(self.env.runner, MasterRunner):  # workers have left by the summary
            self.workers = max(self.workers, self.env.runner.worker_count)
        if self.started is not None and self.full_load is None:
            self.full_load = time.monotonic()
            self.full_load_snapshot = summary.Snapshot.of(self.env.stats)

    def on_test_stopping(self, **_kwargs) -> None:
        if self.started is not None and self.stopped is None:
            self.stopped = time.monotonic()
            self.stopped_snapshot = summary.Snapshot.of(self.env.stats)

    def on_quitting(self, environment: Environment, **_kwargs) -> None:
        if self.started is None:
            return  # nothing ran (e.g. the web UI was opened and closed)
        self.on_test_stopping()
        # The connections left once the load is gone and the app had a moment: a leak stays.
        gevent.sleep(max(0.0, self.stopped + self.options.idle_after - time.monotonic()))
        after = self._take_sample()
        if self.sampler is not None:
            self.sampler.kill()
        if self.monitor is not None:
            self.monitor.close()
        if self.log is not None:
            self.log.close()
        result = self._summary(after)
        self._print_verdict(result)
        if self.options.results_dir:
            path = Path(self.options.results_dir) / "summary.json"
            path.write_text(json.dumps(result, indent=2) + "\n")
        environment.process_exit_code = 0 if result["gate"]["passed"] else 1

    # --- sampling -------------------------------------------------------------------

    def _sample_every_second(self) -> None:
        next_tick = time.monotonic()
        last_progress = 0.0
        while True:
            sample = self._take_sample()
            if sample["elapsed_s"] - last_progress >= self.options.progress_every:
                last_progress = sample["elapsed_s"]
                print(self._progress_line(sample), flush=True)
            next_tick += 1.0
            gevent.sleep(max(0.0, next_tick - time.monotonic()))

    def _take_sample(self) -> dict:
        now = time.monotonic()
        stats = self.env.stats
        message = stats.entries.get(summary.MESSAGE)
        sample = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "elapsed_s": round(now - self.started, 2),
            "phase": "ramp" if self.full_load is None else "load" if self.stopped is None else "after",
            "users": self.env.runner.user_count,
            "rps": round(stats.total.current_rps, 1),
            "fail_per_s": round(stats.total.current_fail_per_sec, 1),
            "failures": stats.total.num_failures,
            "message_p50_ms": message.get_current_response_time_percentile(0.5) if message else None,
            "message_p95_ms": message.get_current_response_time_percentile(0.95) if message else None,
        }
        if self.monitor is not None:
            sample.update(self.monitor.sample())
        self.samples.append(sample)
        if self.log is not None:
            self.log.write(sample)
        return sample

    def _progress_line(self, s: dict) -> str:
        pool = s.get("pgbouncer_pool") or {}
        target = getattr(self.options, "num_users", None) or "?"
        server = s.get("app_server_connections")
        bound = "-" if self.bound is None else self.bound
        return (
            f"{PROGRESS_PREFIX} {self.options.run_label or 'run'} {s['elapsed_s']:5.0f}s {s['phase']:5} "
            f"users {s['users']}/{target}  req/s {s['rps']:.0f}  msg p95 {s['message_p95_ms'] or 0} ms  "
            f"failures {s['failures']}  | PostgreSQL app conns {'?' if server is None else server}"
            f" (bound {bound})  PgBouncer clients {pool.get('cl_active', '-')}"
            f" waiting {pool.get('cl_waiting', '-')}"
        )

    # --- the end --------------------------------------------------------------------

    def _summary(self, after: dict) -> dict:
        options = self.options
        result = summary.build(
            stats=self.env.stats,
            samples=self.samples,
            after=after,
            full_load=self.full_load_snapshot,
            stopped=self.stopped_snapshot,
            started_s=self.started,
            full_load_s=self.full_load,
            stopped_s=self.stopped,
            bound=self.bound,
            max_fail_ratio=options.max_fail_ratio,
            config=options.run_label or options.host,
            description=options.description,
            target=options.host,
            users=options.num_users,
            scenario={
                "mode": options.mode,
                "pace_s": options.pace if options.mode == "chat" else 0,
                "max_rate": options.max_rate if options.mode == "saturate" else None,
                "room_size": options.room_size,
                "history_every_s": options.history_every if options.mode == "chat" else None,
                "spawn_rate": options.spawn_rate,
                "workers": self.workers if isinstance(self.env.runner, MasterRunner) else 1,
            },
            bound_source=self.bound_source,
            postgres_max_connections=self.max_connections,
            chat_counters=dict(Counter(COUNTERS)),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        return result

    def _print_verdict(self, result: dict) -> None:
        latency = result["latency_ms"] or {}
        print(
            f"{PROGRESS_PREFIX} {result['config']}: {result['verdict'].upper()} — "
            f"peak {result['server_connections_peak']}"
            f" app server connections (bound {result['server_connection_bound']}),"
            f" {result['server_connections_after']} after {self.options.idle_after:g}s idle;"
            f" {result['requests']} requests, {result['failures']} failed;"
            f" {result['messages_per_s']} msg/s, p50/p95/p99 {latency.get('p50')}/{latency.get('p95')}/"
            f"{latency.get('p99')} ms",
            flush=True,
        )
        for reason in result["gate"]["reasons"]:
            print(f"{PROGRESS_PREFIX} {result['config']}: gate: {reason}", flush=True)
