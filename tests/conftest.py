"""One native stack for the whole test session: real PostgreSQL, PgBouncer, Redis, Daphne.

It runs on its own ports and state directory, so a `make up` stack is left alone,
and is stopped (by PID) when the session ends, pass or fail.
"""

import contextlib
import os
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from native.layout import Config, default_state_dir
from native.profiles import SHIPPED
from native.services import MONITORING_NAMES
from native.stack import Stack

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "app"))

# TEST_STACK_OFFSET shifts the ports and the state directory, so two sessions
# (two checkouts, or a helper's run beside yours) do not collide.
OFFSET = int(os.environ.get("TEST_STACK_OFFSET", "0"))
TEST_PORTS = {
    "postgres_port": 25432 + OFFSET,
    "pgbouncer_port": 26432 + OFFSET,
    "redis_port": 26379 + OFFSET,
    "app_port": 28000 + OFFSET,
    # Not 29xxx: the Compose test publishes there (tests/compose/compose_harness.py).
    "metrics_port": 27000 + OFFSET,
    "prometheus_port": 27090 + OFFSET,
    "pgbouncer_exporter_port": 27127 + OFFSET,
    "postgres_exporter_port": 27187 + OFFSET,
}


@pytest.fixture(scope="session")
def stack():
    state_dir = default_state_dir()
    config = Config(
        state_dir=state_dir.with_name(f"{state_dir.name}-test{OFFSET or ''}"), app_workers=2, **TEST_PORTS
    )
    stack = Stack(config)
    stack.destroy()  # whatever an interrupted session left
    try:
        stack.up(SHIPPED)
        yield stack
    except Exception:
        print(stack.log_tails(), file=sys.stderr)  # shown with the setup error
        raise
    finally:
        stack.destroy()


@pytest.fixture(scope="module")
def monitoring(stack):
    """Prometheus and its two exporters on the session's stack (make monitoring), for one
    module: stopped after it, so the other tests neither wait for nor carry them."""
    try:
        stack.start_monitoring()
        yield stack
    finally:
        for name in reversed(MONITORING_NAMES):
            stack.stop(name)


LOG_MARKS = pytest.StashKey[dict]()
# Each phase's report ("setup", "call", "teardown") on its test item, for `failed_so_far`.
PHASE_REPORTS = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _mark_service_logs(request):
    """Where each service log ends as a test that uses the stack starts: its failure
    report then carries what the services logged during that test, and nothing older."""
    if "stack" in request.fixturenames:
        request.node.stash[LOG_MARKS] = request.getfixturevalue("stack").log_marks()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    stack = getattr(item, "funcargs", {}).get("stack")
    if report.failed and isinstance(stack, Stack) and LOG_MARKS in item.stash:
        report.sections.append(("service logs during the test", stack.logs_since(item.stash[LOG_MARKS])))
    return report


@pytest.fixture
def failed_so_far(request):
    """Whether this test has failed so far (set-up or call): for a finalizer that saves evidence."""
    return lambda: any(report.failed for report in request.node.stash.get(PHASE_REPORTS, {}).values())


@pytest.fixture(scope="session")
def chromium() -> None:
    """Debian's Chromium and chromedriver for the browser tests (tests/headless_chromium.py),
    installed once when missing (about a minute)."""
    from headless_chromium import install

    install()


@pytest.fixture(scope="session")
def django_app(stack):
    """Django configured in this process like the running app: through PgBouncer."""
    os.environ.update(stack.app_env(SHIPPED))
    os.environ["DJANGO_SETTINGS_MODULE"] = "chat_site.settings"
    import django

    django.setup()
    from django.conf import settings

    return settings


@pytest.fixture(scope="module")
def app_showing_pool(stack):
    """The app with the demo's pool panel on (CHAT_SHOW_POOL) for one test module, then as shipped."""
    stack.restart_app(SHIPPED, {"CHAT_SHOW_POOL": "true"})
    try:
        yield stack
    finally:
        stack.restart_app(SHIPPED)


@pytest.fixture
def room(stack) -> str:
    """A fresh room for one test, so tests never see each other's messages."""
    from probes.chat import ChatHttp

    slug = f"t-{uuid.uuid4().hex[:12]}"
    ChatHttp(stack.app_url).ensure_room(slug)
    return slug


@pytest.fixture
def owner_db(stack):
    """Straight to PostgreSQL as the schema owner: to check what was stored."""
    with psycopg.connect(stack.dsn("chat_owner", through_pgbouncer=False), autocommit=True) as conn:
        yield conn


@pytest.fixture
def monitor_db(stack):
    with psycopg.connect(stack.dsn("chat_monitor", through_pgbouncer=False), autocommit=True) as conn:
        yield conn


@pytest.fixture
def pgbouncer_console(stack):
    with psycopg.connect(
        stack.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"), autocommit=True
    ) as conn:
        yield conn


@pytest.fixture
def open_transactions(stack):
    """open_transactions(n): n clients of PgBouncer as the app role, each in an open
    transaction, so each holds a server connection until the block ends. PgBouncer hands
    out server connections last-in first-out: the first one taken is the one the previous
    statement ran on, so the next statement lands on another."""

    @contextlib.contextmanager
    def holding(count: int = 1):
        with contextlib.ExitStack() as held:
            for _ in range(count):
                conn = held.enter_context(psycopg.connect(stack.dsn("chat_app", through_pgbouncer=True)))
                conn.execute("SELECT 1")  # not autocommit: the transaction stays open
            yield

    return holding


@pytest.fixture
def leaves_prepared_statements(stack):
    """For a test that prepares statements through PgBouncer: transaction pooling leaves them
    on the server connections, where a later test's statement of the same name (psycopg
    calls every connection's first one _pg3_0) would run this test's query instead of its
    own, without an error. PgBouncer is restarted afterwards, so no later test inherits them."""
    yield
    stack.restart("pgbouncer")


@pytest.fixture
def passfile_dsns(stack, tmp_path) -> dict[str, str]:
    """DSNs of the stack's roles as a user would write them: the passwords in a pgpass file
    (':' and '\\' escaped), not in the DSN, the command line or the settings."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    passfile = tmp_path / "pgpass"
    dsns = {
        "app": stack.dsn("chat_app", through_pgbouncer=True),
        "app-direct": stack.dsn("chat_app", through_pgbouncer=False),
        "owner-direct": stack.dsn("chat_owner", through_pgbouncer=False),
        "monitor": stack.dsn("chat_monitor", through_pgbouncer=False),
        "console": stack.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"),
    }
    lines, without_passwords = [], {}
    for name, dsn in dsns.items():
        parts = conninfo_to_dict(dsn)
        fields = [parts["host"], str(parts["port"]), parts["dbname"], parts["user"], parts.pop("password")]
        lines.append(":".join(field.replace("\\", "\\\\").replace(":", "\\:") for field in fields))
        without_passwords[name] = make_conninfo(**parts, passfile=str(passfile))
    passfile.write_text("\n".join(lines) + "\n")
    passfile.chmod(0o600)
    return without_passwords
