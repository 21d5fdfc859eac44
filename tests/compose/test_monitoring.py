"""`docker compose --profile monitoring up --wait` for real: Prometheus, both exporters and the
app's metrics on the running Compose stack, asked through Prometheus' HTTP API as a user would.

Under load the series move and the app role's server connections stay within the bound;
under a saturated pool (as `make chaos` saturates it) the saturation alerts fire, and they
resolve once it ends. The dashboard is then opened in a real headless Chromium; its
screenshot is kept in results/compose-test/ (the README's).
"""

import json
import re
import ssl
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from compose_harness import PROMETHEUS_PORT, RESULTS, ComposeStack, drive_load
from headless_chromium import quit_chromium, start_chromium
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from probes.chat import ChatHttp
from probes.connections import connection_bound

# One bring-up: `--wait` is what this proves, and it is Compose v2's.
pytestmark = [
    pytest.mark.compose,
    pytest.mark.timeout(1200),
    pytest.mark.parametrize("compose_stack", ["v2"], indirect=True),
]

PROMETHEUS = f"http://127.0.0.1:{PROMETHEUS_PORT}"
JOBS = {"app", "pgbouncer", "postgres", "prometheus"}
APP_POOL = 'database="chat",user="chat_app"'
SERVER_CONNECTIONS = "sum(" + " + ".join(
    f"pgbouncer_pools_server_{state}_connections{{{APP_POOL}}}"
    for state in ("active", "idle", "used", "testing", "login")
) + ")"  # fmt: skip
BOUND = "max(pgbouncer_config_max_user_connections)"  # pgbouncer.ini: the app role's bound
# Two scrapes and an evaluation (5 s each, monitoring/prometheus.yml), with room to spare.
SCRAPED_WITHIN_S = 20
# The alerts a saturated pool must raise (monitoring/rules/chat.rules.yml); their `for:`
# durations decide how long the saturation lasts.
SATURATION_ALERTS = {"ServerConnectionsAtBound", "PgBouncerClientsWaiting", "PgBouncerMaxWaitHigh"}
SATURATION_S = 50
ALERT_WITHIN_S = 45

# In the app container, as the app's user and with its password: every server connection
# the pool may open held in a transaction (each statement under statement_timeout, 5 s), and
# a few more clients queued behind them at PgBouncer, retrying as query_wait_timeout (10 s)
# refuses them, until the deadline. loadtest/faults.py saturates the native stack the same way.
SATURATE = """
import sys, threading, time, psycopg
bound, seconds = int(sys.argv[1]), float(sys.argv[2])
dsn = ("host=pgbouncer port=6432 dbname=chat user=chat_app sslmode=verify-full "
       "sslrootcert=/run/secrets/app/ca.crt connect_timeout=5")
password = open("/run/secrets/app/POSTGRES_APP_PASSWORD").read()
deadline = time.monotonic() + seconds
held, refused, errors = [], [], []

def hold():
    try:
        with psycopg.connect(dsn, password=password) as conn:
            held.append(1)
            while time.monotonic() < deadline:
                conn.execute("SELECT pg_sleep(2)")
    except Exception as error:
        errors.append(repr(error))

def queue():
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, password=password, autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError as error:
            refused.append(str(error).splitlines()[0])

threads = [threading.Thread(target=hold) for _ in range(bound)]
threads += [threading.Thread(target=queue) for _ in range(3)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(seconds + 30)
print(len(held), len(refused), errors)
sys.exit(1 if errors or len(held) != bound else 0)
"""


def prometheus(path: str, **params: str):
    """GET Prometheus' HTTP API; the `data` of a successful answer."""
    url = f"{PROMETHEUS}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def value(expr: str) -> float | None:
    """An instant query's single value, None when it has no series."""
    result = prometheus("query", query=expr)["result"]
    assert len(result) <= 1, f"{expr} has {len(result)} series: {result}"
    return float(result[0]["value"][1]) if result else None


def firing() -> set[str]:
    return {
        alert["labels"]["alertname"] for alert in prometheus("alerts")["alerts"] if alert["state"] == "firing"
    }


def record(line: str) -> None:
    """A figure for the README (results/compose-test/monitoring.txt), as this run measured it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "monitoring.txt").open("a") as out:
        out.write(line + "\n")


def wait_for(condition, what: str, timeout: float, seen=lambda: sorted(firing())):
    """Poll ``condition()`` every second until truthy (returned); fail naming ``what`` and
    what was ``seen`` instead (by default: the alerts firing)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} after {timeout:g}s; seen: {seen()}")
        time.sleep(1)
    return result


@pytest.fixture(scope="module")
def monitoring(compose_stack: ComposeStack) -> ComposeStack:
    """The stack with its monitoring profile, up and healthy as the README says to bring it up."""
    up = compose_stack.compose("up", "--detach", "--wait", profiles=("monitoring",), timeout=300)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "monitoring.txt").unlink(missing_ok=True)
    (RESULTS / "monitoring-up-wait.txt").write_text(
        f"$ docker compose --profile monitoring up --detach --wait    # Compose {compose_stack.version}\n"
        f"{up.stderr}{up.stdout}"
    )
    return compose_stack


def test_every_target_is_up(monitoring: ComposeStack):
    def targets():
        active = prometheus("targets", state="active")["activeTargets"]
        return {target["labels"]["job"]: target["health"] for target in active}

    health = wait_for(lambda: set(targets().values()) == {"up"} and targets(), "every target up", 30, targets)
    assert set(health) == JOBS
    assert value("pgbouncer_up") == 1 and value("pg_up") == 1
    assert value(BOUND) == connection_bound()


def test_the_metrics_port_is_not_behind_the_published_one(monitoring: ComposeStack):
    trusting = ssl.create_default_context(cafile=monitoring.ca_file())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{monitoring.app_url}/metrics", timeout=10, context=trusting)
    assert refused.value.code == 404


def test_series_move_with_the_load_and_server_connections_stay_within_the_bound(monitoring: ComposeStack):
    room = f"m-{uuid.uuid4().hex[:12]}"
    ChatHttp(monitoring.app_url, ca_file=monitoring.ca_file()).ensure_room(room)
    acknowledged = "sum(chat_messages_acknowledged_total)"
    before = value(acknowledged) or 0.0
    posters = 8

    with ThreadPoolExecutor(max_workers=1) as loader:
        load = loader.submit(drive_load, monitoring.direct_url, room, 25, posters)
        # While it runs: Prometheus sees every poster's socket open.
        wait_for(lambda: (value("sum(chat_websockets_open)") or 0) >= posters, "the sockets counted", 25)
        done = load.result(timeout=90)  # the load's own error, if it failed
    assert done.posts > 100

    # Every acknowledged message is counted once, across both Daphne processes.
    wait_for(lambda: value(acknowledged) - before == done.posts, f"{done.posts} acknowledgements counted", 30)
    assert value("count(chat_websockets_open)") == 2  # one series per Daphne process
    window = "[5m:5s]"
    peak = value(f"max_over_time({SERVER_CONNECTIONS}{window})")
    assert 1 <= peak <= connection_bound(), f"peak {peak} server connections"
    assert value(f"max_over_time(sum(rate(chat_messages_acknowledged_total[30s])){window})") > 1
    assert value(f"max_over_time(sum(chat_db_pool_size){window})") >= 1
    record(
        f"load: {done.posts} messages acknowledged and {done.reads} reads in 25 s over {posters} sockets; "
        f"Prometheus counted {done.posts}; server connections peak {peak:g} of {connection_bound()}"
    )


def test_a_saturated_pool_fires_the_alerts_which_resolve_after(monitoring: ComposeStack):
    assert not firing() & SATURATION_ALERTS, "already firing before the fault"
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as fault:
        saturation = fault.submit(
            monitoring.docker,
            "exec", "-i", monitoring.container("app"),
            "python", "-", str(connection_bound()), str(SATURATION_S),
            input=SATURATE, timeout=SATURATION_S + 60,
        )  # fmt: skip
        wait_for(lambda: firing() >= SATURATION_ALERTS, f"firing {sorted(SATURATION_ALERTS)}", ALERT_WITHIN_S)
        fired_after = time.monotonic() - started
        held, refused = saturation.result(timeout=SATURATION_S + 90).stdout.split()[:2]
    assert int(held) == connection_bound() and int(refused) > 0
    assert fired_after < SATURATION_S

    # Never above the bound, even saturated; and the waits were seen.
    assert value(f"max_over_time({SERVER_CONNECTIONS}[5m:5s])") == connection_bound()
    assert value(f"max_over_time(pgbouncer_pools_client_maxwait_seconds{{{APP_POOL}}}[5m])") >= 5
    # PgBouncerMaxWaitHigh keeps firing for 30 s after its last breach, the others resolve at once.
    wait_for(lambda: not firing() & SATURATION_ALERTS, "resolved", 60)
    record(
        f"saturation: {held} server connections held for {SATURATION_S} s, {refused} queued clients refused; "
        f"{sorted(SATURATION_ALERTS)} all firing {fired_after:.0f} s after it began, "
        f"resolved {time.monotonic() - started - SATURATION_S:.0f} s after it ended"
    )


def test_the_dashboard_shows_the_bound_in_a_browser(monitoring: ComposeStack, chromium):
    profile = Path(tempfile.mkdtemp(prefix="chat-dashboard-"))
    driver = start_chromium(profile, window_size="1300,1500")
    try:
        driver.get(f"{PROMETHEUS}/consoles/chat.html?minutes=5")
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)
        headline = wait.until(
            lambda d: re.fullmatch(r"(\d+) of (\d+)", d.find_element(By.ID, "connections").text)
        )
        assert int(headline[2]) == connection_bound() and int(headline[1]) <= connection_bound()
        # Every panel drew at least one line from Prometheus' answers.
        wait.until(
            lambda d: all(
                p.find_elements(By.TAG_NAME, "polyline") for p in d.find_elements(By.CLASS_NAME, "panel")
            )
        )
        assert "did not answer" not in driver.find_element(By.ID, "status").text
        RESULTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(RESULTS / "dashboard.png"))
    finally:
        quit_chromium(driver, profile)
