"""The service entrypoints refuse unsafe secrets, wait with a limit, and leave nothing half-made.

They run exactly as the stack runs them: the staged copies, as the service user.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from native.layout import SYSTEM_PATH
from native.profiles import SHIPPED

GOOD = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def scratch(stack) -> Path:
    """An empty directory the service user owns."""
    path = stack.path("run", f"scratch-{uuid.uuid4().hex[:8]}")
    path.mkdir()
    if stack.service_user:
        os.chown(path, stack.service_user.pw_uid, stack.service_user.pw_gid)
    return path


def run_entrypoint(stack, service: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    user = stack.service_user
    return subprocess.run(
        [str(stack.path("opt", service, "entrypoint.sh"))],
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", **env},
        cwd=stack.dir,  # as the stack runs them: the checkout may be closed to the service user
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def postgres_env(scratch: Path, **secrets) -> dict[str, str]:
    return {
        "PGDATA": str(scratch / "pgdata"),
        "POSTGRES_PORT": "25999",
        "POSTGRES_SOCKET_DIR": str(scratch),
        "POSTGRES_OWNER_VERIFIER": GOOD,
        "POSTGRES_APP_VERIFIER": GOOD,
        "PGBOUNCER_AUTH_VERIFIER": GOOD,
        "POSTGRES_MONITOR_VERIFIER": GOOD,
        **secrets,
    }


@pytest.mark.parametrize(
    ("secret", "value", "message"),
    [
        ("POSTGRES_APP_VERIFIER", "change-me-app-verifier", "POSTGRES_APP_VERIFIER is still a placeholder"),
        ("POSTGRES_OWNER_VERIFIER", "", "POSTGRES_OWNER_VERIFIER is not set"),
        ("POSTGRES_MONITOR_VERIFIER", "short", "POSTGRES_MONITOR_VERIFIER is shorter than 16"),
    ],
)
def test_postgres_refuses_unsafe_secrets_and_creates_nothing(stack, scratch, secret, value, message):
    result = run_entrypoint(stack, "postgres", postgres_env(scratch, **{secret: value}))
    assert result.returncode != 0
    assert message in result.stderr
    # No data directory, no .partial: only the rendered pg_hba.conf, in the run directory.
    assert sorted(p.name for p in scratch.iterdir()) == ["pg_hba.conf"]


def test_postgres_refuses_a_directory_that_is_not_a_cluster(stack, scratch):
    (scratch / "pgdata").mkdir()
    (scratch / "pgdata" / "precious.txt").write_text("not a database")
    if stack.service_user:
        os.chown(scratch / "pgdata", stack.service_user.pw_uid, stack.service_user.pw_gid)
    result = run_entrypoint(stack, "postgres", postgres_env(scratch))
    assert result.returncode != 0
    assert "not empty but holds no cluster" in result.stderr
    assert (scratch / "pgdata" / "precious.txt").read_text() == "not a database"


def pgbouncer_env(scratch: Path, **overrides) -> dict[str, str]:
    return {
        "POSTGRES_HOST": "127.0.0.1",
        "POSTGRES_PORT": "1",  # nothing listens there
        "PGBOUNCER_RUN_DIR": str(scratch / "pgbouncer"),
        "PGBOUNCER_WAIT_SECONDS": "2",
        "PGBOUNCER_AUTH_PASSWORD": GOOD,
        "PGBOUNCER_ADMIN_VERIFIER": GOOD,
        "PGBOUNCER_STATS_VERIFIER": GOOD,
        **overrides,
    }


def test_pgbouncer_refuses_a_missing_secret(stack, scratch):
    env = pgbouncer_env(scratch)
    del env["PGBOUNCER_ADMIN_VERIFIER"]
    result = run_entrypoint(stack, "pgbouncer", env)
    assert result.returncode != 0
    assert "PGBOUNCER_ADMIN_VERIFIER is not set" in result.stderr
    assert not (scratch / "pgbouncer").exists()


def test_pgbouncer_waits_for_postgresql_with_a_limit(stack, scratch):
    result = run_entrypoint(stack, "pgbouncer", pgbouncer_env(scratch))
    assert result.returncode != 0
    assert "PostgreSQL at 127.0.0.1:1 did not accept connections within 2s" in result.stderr
    # The generated auth_file holds PgBouncer's own passwords: owner-only.
    assert (scratch / "pgbouncer" / "userlist.txt").stat().st_mode & 0o777 == 0o600


def test_redis_refuses_a_password_hash_that_is_not_one(stack, scratch):
    env = {"REDIS_RUN_DIR": str(scratch / "redis"), "REDIS_PASSWORD_SHA256": "not-a-sha256-of-anything"}
    result = run_entrypoint(stack, "redis", env)
    assert result.returncode != 0
    assert "REDIS_PASSWORD_SHA256 is not a SHA-256 in hex" in result.stderr


def test_app_waits_for_pgbouncer_with_a_limit(stack):
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **stack.app_env(SHIPPED),
        "DATABASE_URL": "postgres://chat_app@127.0.0.1:1/chat",
        "APP_WAIT_SECONDS": "2",
    }
    app_entrypoint = Path(__file__).resolve().parent.parent / "app" / "entrypoint.sh"
    result = subprocess.run(
        [str(app_entrypoint), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "database 'default' at 127.0.0.1:1 did not answer within 2s" in result.stderr
