"""`make monitoring` natively: Prometheus and its two exporters from Debian's packages
(native/fetch-monitoring.sh), run by monitoring/entrypoint.sh under the stack's own
supervisord, scraping the real PgBouncer and PostgreSQL.

The app's job is configured but not asserted here: its metrics endpoint is the app's.
"""

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from native.layout import PROJECT
from native.services import MONITORING_NAMES

SCRAPED = ("pgbouncer", "postgres", "prometheus")
LOOPBACK_HEX = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it
TCP_LISTEN = "0A"


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


def _api(stack, path: str, **query: str):
    status, body = _get(f"{stack.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(query)}")
    answer = json.loads(body)
    assert (status, answer["status"]) == (200, "success"), answer
    return answer["data"]


def _values(stack, promql: str) -> list[str]:
    """An instant query's sample values (strings, as Prometheus sends them)."""
    return [sample["value"][1] for sample in _api(stack, "query", query=promql)["result"]]


@pytest.fixture(scope="module")
def targets(monitoring) -> dict[str, dict]:
    """Prometheus' active targets by job, once pgbouncer, postgres and prometheus are up: each
    scraped successfully at least once (every 5 s, prometheus.yml)."""
    deadline = time.monotonic() + 60
    while True:
        by_job = {target["labels"]["job"]: target for target in _api(monitoring, "targets")["activeTargets"]}
        if all(by_job.get(job, {}).get("health") == "up" for job in SCRAPED):
            return by_job
        health = {job: (target["health"], target["lastError"]) for job, target in by_job.items()}
        assert time.monotonic() < deadline, f"not every target up within 60 s: {health}"
        time.sleep(1)


def test_prometheus_scrapes_both_exporters_and_itself_on_loopback(monitoring, targets):
    c = monitoring.config
    ports = {
        "app": c.metrics_port,
        "pgbouncer": c.pgbouncer_exporter_port,
        "postgres": c.postgres_exporter_port,
        "prometheus": c.prometheus_port,
    }
    assert {job: target["labels"]["instance"] for job, target in targets.items()} == {
        job: f"127.0.0.1:{port}" for job, port in ports.items()
    }


def test_the_pgbouncer_exporter_reads_the_app_pool_from_pgbouncers_console(monitoring, targets):
    # default_pool_size of pgbouncer/pgbouncer.ini; a metric name of exporter 0.10, which
    # Debian 12's exporter (another program) does not have.
    assert _values(monitoring, 'pgbouncer_databases_pool_size{name="chat"}') == ["10"]


def test_the_postgres_exporter_reaches_postgresql_as_the_monitor(monitoring, targets, monitor_db):
    assert _values(monitoring, "pg_up") == ["1"]
    # The dashboard's and the rules' PostgreSQL series, in Debian 12's exporter (0.11) too.
    [max_connections] = monitor_db.execute("SHOW max_connections").fetchone()
    assert _values(monitoring, "pg_settings_max_connections") == [max_connections]
    # At least the exporter's own session, active in `chat` while it is scraped.
    [active] = _values(monitoring, 'sum(pg_stat_activity_count{datname="chat",state="active"})')
    assert float(active) >= 1


def test_the_dashboard_is_served_by_prometheus(monitoring):
    status, page = _get(f"{monitoring.prometheus_url}/consoles/chat.html")
    assert status == 200
    assert "<title>Chat stack: the pool</title>" in page


def test_status_lists_them_running_as_the_services_user(monitoring):
    result = subprocess.run(
        [sys.executable, "-m", "native", "status"],
        env={**os.environ, "STACK_DIR": str(monitoring.dir)},
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    expected_uid = monitoring.service_user.pw_uid if monitoring.service_user else os.geteuid()
    for name in MONITORING_NAMES:
        pid = monitoring.pid(name)
        assert f"{name:18} running, pid {pid}" in result.stdout.splitlines(), result.stdout
        assert Path(f"/proc/{pid}").stat().st_uid == expected_uid, name


def test_they_listen_on_loopback_only(monitoring):
    c = monitoring.config
    ports = (c.prometheus_port, c.pgbouncer_exporter_port, c.postgres_exporter_port)
    listening = {port: set() for port in ports}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == TCP_LISTEN and int(port, 16) in listening:
                listening[int(port, 16)].add(address)
    assert listening == {port: {LOOPBACK_HEX} for port in ports}
