"""The native stack itself: supervisord keeps its services running, and as root nothing runs as root.

As root, PostgreSQL, PgBouncer, Redis and Daphne run as the unprivileged service
user, and root writes only into directories that user cannot change, so no
path or pid file root writes through can be swapped for a link by it.
"""

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from native.services import LONG_RUNNING, MONITORING_NAMES, app_ready, pgbouncer_ready

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="as a regular user every process is that user's")


def _uid(pid: int) -> int:
    return Path(f"/proc/{pid}").stat().st_uid


def test_status_names_every_long_running_service_with_its_pid(stack):
    status = stack.status()
    assert list(status) == list(LONG_RUNNING)
    # Monitoring runs only when asked for (tests/test_native_monitoring.py).
    assert all(isinstance(pid, int) for name, pid in status.items() if name not in MONITORING_NAMES), status
    assert len(stack.daphne_pids()) == stack.config.app_workers


def test_a_crashed_pgbouncer_is_started_again_and_the_app_serves_again(stack):
    crashed = stack.pid("pgbouncer")
    os.kill(crashed, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.pid("pgbouncer") in (None, crashed) or not pgbouncer_ready(stack):
        assert time.monotonic() < deadline, "supervisord did not start PgBouncer again within 30 s"
        time.sleep(0.2)
    while not app_ready(stack):  # the pool replaces the connections the crash killed
        assert time.monotonic() < deadline, "/healthz did not answer 200 within 30 s of the crash"
        time.sleep(0.2)


@as_root
def test_as_root_every_service_runs_as_the_unprivileged_service_user(stack):
    user = stack.service_user
    started_by_up = [pid for name, pid in stack.status().items() if name not in MONITORING_NAMES]
    pids = [*started_by_up, *stack.daphne_pids()]
    assert {_uid(pid) for pid in pids} == {user.pw_uid}


@as_root
def test_as_root_root_writes_only_into_directories_the_service_user_cannot_change(stack):
    for directory in (stack.dir, *(stack.path(sub) for sub in ("secrets", "run", "logs", "opt"))):
        info = os.lstat(directory)
        assert stat.S_ISDIR(info.st_mode), directory
        assert info.st_uid == 0, f"{directory} is not root's"
        assert not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH), f"{directory} is writable by others"
    for written_by_root in (*stack.path("logs").iterdir(), *stack.path("run").glob("supervisor*")):
        assert written_by_root.lstat().st_uid == 0, written_by_root
    assert stat.S_IMODE(stack.path("run", "supervisor.sock").stat().st_mode) == 0o700


def test_secrets_are_readable_by_the_services_only(stack):
    """The originals are the invoking user's (0700); each service's copies its user's (0500/0400)."""
    store = stack.path("secrets", "store")
    assert (store.lstat().st_uid, stat.S_IMODE(store.lstat().st_mode)) == (os.geteuid(), 0o700)
    service_uid = stack.service_user.pw_uid if stack.service_user else os.geteuid()
    consumers = [path for path in stack.path("secrets").iterdir() if path.name != "store"]
    assert {path.name for path in consumers} >= {"postgres", "pgbouncer", "redis", "app", "migrate"}
    for directory in consumers:
        info = directory.lstat()
        assert stat.S_ISDIR(info.st_mode), directory
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (service_uid, 0o500), directory
        for secret in directory.iterdir():
            info = secret.lstat()
            assert stat.S_ISREG(info.st_mode), secret
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (service_uid, 0o400), secret
