"""Locust's web UI, as a person opens it: the Connections tab (loadtest/web_ui_connections.py).

Locust runs as `locust --config loadtest/locust.conf` does, with its web UI on a free
loopback port, a few chat users against the session's native stack
(tests/conftest.py) and the monitor's settings pointing at it; its tab is read as
JSON and in Debian's headless Chromium. Every Locust is stopped by its PID, pass or fail.

SCREENSHOT_DIR=docs writes the tab as docs/locust-connections.png (the README's).
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from headless_chromium import ARTIFACTS, quit_chromium, save_evidence, start_chromium
from psycopg.conninfo import make_conninfo
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from loadtest.scenario import LOCUST_CONF, PROJECT
from probes.connections import APP_ROLE, connection_bound

USERS = 4
TIMEOUT_S = 30
SERVER_CONNECTIONS = f"PostgreSQL server connections ({APP_ROLE})"


class LocustWebUi:
    """One Locust process with its web UI on a free loopback port; its output in a log file."""

    def __init__(self, log_path: Path, argv: list[str], env: dict[str, str], application_name: str):
        self.log_path = log_path
        self.application_name = application_name  # its monitor's, in pg_stat_activity
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [*argv, "--web-host", "127.0.0.1", "--web-port", str(self.port)],
                cwd=PROJECT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def wait_until(self, path: str, condition, what: str, timeout: float = TIMEOUT_S) -> dict:
        """Poll the JSON at ``path`` until ``condition(answer)``; fail naming ``what``."""
        deadline = time.monotonic() + timeout
        answer: dict | str = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Locust exited ({self.process.returncode}) before {what}:\n{self.log_tail()}")
            try:
                answer = self.get(path)
            except (OSError, ValueError) as error:  # not listening yet
                answer = repr(error)
            else:
                if condition(answer):
                    return answer
            time.sleep(0.5)
        pytest.fail(f"not {what} after {timeout}s; {path} said {answer!r}\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (Locust fires its quitting event), SIGKILL if it outlives ``timeout``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def locust(log_path: Path, stack, *, monitor: bool, users: int = 0):
    """Locust with its web UI; with ``users``, a chat test started at once (--autostart)."""
    argv = [sys.executable, "-m", "locust", "--config", str(LOCUST_CONF), "--host", stack.app_url]
    if users:
        argv += ["--autostart", "--users", str(users), "--spawn-rate", str(users), "--run-time", "5m"]
        argv += ["--room-prefix", f"ui-{uuid.uuid4().hex[:8]}", "--pace", "0.5", "--history-every", "1"]
        argv += ["--idle-after", "1"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MONITOR_")}
    application_name = f"locust-{uuid.uuid4().hex[:8]}"
    if monitor:
        monitor_env = stack.monitor_env()
        dsn = make_conninfo(monitor_env["MONITOR_POSTGRES_DSN"], application_name=application_name)
        env.update(monitor_env, MONITOR_POSTGRES_DSN=dsn)
    web_ui = LocustWebUi(log_path, argv, env, application_name)
    try:
        web_ui.wait_until("/stats/requests", lambda _answer: True, "serving its web UI")
        yield web_ui
    finally:
        web_ui.stop()


@pytest.fixture(scope="module")
def under_load(stack, tmp_path_factory):
    """One Locust for the module's tests under load: USERS chat users, the monitor on."""
    with locust(tmp_path_factory.mktemp("locust") / "locust.log", stack, monitor=True, users=USERS) as web_ui:
        web_ui.wait_until(
            "/stats/requests",
            lambda stats: stats["state"] == "running" and stats["user_count"] == USERS,
            f"running {USERS} users",
        )
        yield web_ui


def monitor_backends(monitor_db, web_ui: LocustWebUi) -> set[int]:
    """PostgreSQL backends of this Locust's monitors."""
    rows = monitor_db.execute(
        "SELECT pid FROM pg_stat_activity WHERE usename = 'chat_monitor' AND application_name = %s",
        [web_ui.application_name],
    ).fetchall()
    return {pid for (pid,) in rows}


# --- without the monitor, and at quit (before the module's Locust under load starts) ---


def test_without_the_monitor_settings_the_tab_says_what_to_set(stack, tmp_path):
    with locust(tmp_path / "locust.log", stack, monitor=False) as web_ui:
        stats = web_ui.get("/stats/requests")
        [table] = [table for table in stats["extended_stats"] if table["key"] == "connections"]
        [row] = table["data"]  # one line, naming each setting
        assert list(row) == ["hint"] and "\n" not in row["hint"]
        for setting in ("MONITOR_POSTGRES_DSN", "MONITOR_PGBOUNCER_DSN", "_PASSWORD_FILE"):
            assert setting in row["hint"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            web_ui.get("/connections/data")
        assert missing.value.code == 404


def test_locust_quits_promptly_and_cleanly_with_the_tab_sampling(stack, tmp_path, monitor_db):
    """The tab samples from start-up, before any test: on one connection of its own. At quit
    (SIGTERM, as `docker compose stop` sends) its greenlet and monitor stop without an error
    and Locust exits at once: 0, as nothing ran."""
    with locust(tmp_path / "locust.log", stack, monitor=True) as web_ui:
        web_ui.wait_until("/connections/data", lambda data: len(data["readings"]) >= 3, "sampling")
        assert len(monitor_backends(monitor_db, web_ui)) == 1
        assert web_ui.stop(timeout=15) == 0, web_ui.log_tail()  # SIGKILLed after 15 s: -9
    assert "Traceback" not in web_ui.log_path.read_text(), web_ui.log_tail()


# --- the tab's data --------------------------------------------------------------------


def test_the_tab_reports_server_connections_against_the_bound_while_users_run(under_load):
    data = under_load.wait_until(
        "/connections/data",
        # The peak starts again with each test: it has a value from the test's first reading on.
        lambda data: (data["now"]["server_connections"] or 0) > 0 and "server_connections" in data["peak"],
        "reading server connections of the app role",
    )
    assert data["role"] == APP_ROLE
    assert data["bound"] == connection_bound() == 12
    assert data["now"]["server_connections"] <= data["bound"]
    assert data["now"]["clients_waiting"] == 0  # a few users never fill the pool
    assert data["peak"]["server_connections"] >= data["now"]["server_connections"]
    assert len(data["readings"]) >= 2  # one a second, since Locust started

    stats = under_load.get("/stats/requests")
    assert stats["user_count"] == USERS
    [table] = [table for table in stats["extended_stats"] if table["key"] == "connections"]
    rows = {row["measure"]: row for row in table["data"]}
    assert rows[SERVER_CONNECTIONS]["bound"] == 12
    assert isinstance(rows[SERVER_CONNECTIONS]["now"], int)
    assert rows["PgBouncer clients waiting"]["now"] == 0


def test_the_tab_samples_on_connections_it_keeps(under_load, monitor_db):
    """Locust holds two monitor connections to PostgreSQL (the run's recorder and the tab),
    the same ones sample after sample: a sampler that reconnected would change them."""
    first = monitor_backends(monitor_db, under_load)
    before = under_load.get("/connections/data")["readings"][-1]["time"]
    under_load.wait_until(
        "/connections/data",
        lambda data: data["readings"][-1]["time"] >= before + 3,
        "three more readings",
    )
    assert len(first) == 2
    assert monitor_backends(monitor_db, under_load) == first


# --- the tab in a browser --------------------------------------------------------------


@pytest.fixture
def browser(chromium, request, failed_so_far):
    with tempfile.TemporaryDirectory(prefix="locust-browser-", ignore_cleanup_errors=True) as profile:
        driver = start_chromium(Path(profile), window_size="1200,900")
        try:
            yield driver
        finally:
            try:
                if failed_so_far():
                    saved = save_evidence(driver, ARTIFACTS / request.node.name)
                    print(f"\nbrowser evidence of {request.node.nodeid}:", *saved, sep="\n  ")
            finally:
                quit_chromium(driver, Path(profile))


READ_TAB = """
const table = document.querySelector('th[data-sortkey="bound"]')?.closest("table");
const chart = document.getElementById("connections-chart");
const line = chart?.querySelector('polyline[data-series="server_connections"]');
return {
  rows: table ? [...table.querySelectorAll("tbody tr")].map((tr) =>
    [...tr.querySelectorAll("td")].map((td) => td.textContent)) : [],
  legend: chart?.querySelector('[data-legend="server_connections"]')?.textContent ?? null,
  points: line ? line.getAttribute("points").trim().split(/\\s+/).length : 0,
  bound: chart?.querySelector('[data-label="bound"]')?.textContent ?? null,
};
"""


def connections_tab(driver):
    """Locust's tab named Connections (the UI shows tab titles in capitals), or None."""
    tabs = driver.find_elements(By.CSS_SELECTOR, '[role="tab"]')
    return next((tab for tab in tabs if tab.text.lower() == "connections"), None)


def test_the_connections_tab_shows_the_numbers_in_a_browser(under_load, browser):
    browser.get(under_load.url + "/")
    tab = WebDriverWait(browser, TIMEOUT_S).until(connections_tab, "no Connections tab in Locust's web UI")
    tab.click()

    def shown(driver):
        tab = driver.execute_script(READ_TAB)
        rows = {row[0]: row for row in tab["rows"]}
        server = rows.get(SERVER_CONNECTIONS)
        ready = server and server[1].isdigit() and int(server[1]) > 0 and tab["points"] >= 3
        return tab if ready else None

    try:
        tab = WebDriverWait(browser, TIMEOUT_S, poll_frequency=0.5).until(shown)
    except TimeoutException:
        pytest.fail(f"the tab never showed server connections: {browser.execute_script(READ_TAB)}")
    rows = {row[0]: row for row in tab["rows"]}
    assert rows[SERVER_CONNECTIONS][3] == "12"  # the Bound column
    assert rows["PgBouncer clients waiting"][1] == "0"
    assert tab["bound"] == "bound 12"  # the chart's bound line
    assert tab["legend"].startswith("PostgreSQL server connections: ")
    assert int(tab["legend"].rsplit(" ", 1)[1]) > 0

    if screenshots := os.environ.get("SCREENSHOT_DIR"):
        path = Path(screenshots) / "locust-connections.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert browser.save_screenshot(str(path)), f"no screenshot written to {path}"
        print(f"\nscreenshot: {path}")
