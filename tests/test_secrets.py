"""secrets/generate.py, the one job that makes every secret and certificate: run as the stacks run it.

And the promise that follows from it: a password may hold any printable character
(space, quotes, backslash, %, :, @, #...) and still work everywhere, proven by a
whole second native stack started with such passwords of its own.
"""

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from native.layout import Config
from native.stack import Stack

PROJECT = Path(__file__).resolve().parent.parent
OFFSET = int(os.environ.get("TEST_STACK_OFFSET", "0"))  # as tests/conftest.py moves the test stack
GENERATE = PROJECT / "secrets" / "generate.py"


def generate(directory: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GENERATE)],
        env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(directory), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_second_run_keeps_every_secret_and_certificate(tmp_path):
    assert generate(tmp_path).returncode == 0
    first = files(tmp_path / "store")
    assert {"ca.crt", "ca.key", "postgres.crt", "proxy.key", "POSTGRES_APP_PASSWORD"} <= set(first)
    assert generate(tmp_path).returncode == 0
    assert files(tmp_path / "store") == first


def test_a_regular_user_makes_them_again_over_what_it_handed_over(tmp_path):
    """Root never meets a permission; the regular user who runs `make demo` (the stack
    restarts in each profile) must be able to replace the 0500 directories it handed over."""
    if os.geteuid() != 0:
        workdir, argv = tmp_path, [sys.executable, str(GENERATE)]
    else:  # as the unprivileged user the native stack runs its services as
        user = pwd.getpwnam("postgres")
        workdir = Path(tempfile.mkdtemp(prefix="secrets-as-user-"))
        shutil.copy(GENERATE, workdir / "generate.py")
        os.chown(workdir, user.pw_uid, user.pw_gid)
        workdir.chmod(0o755)
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                "/usr/bin/python3", str(workdir / "generate.py")]  # fmt: skip
    try:
        for run in ("first", "second"):
            result = subprocess.run(
                argv,
                env={"PATH": os.environ["PATH"], "SECRETS_DIR": str(workdir / "secrets")},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, f"{run} run: {result.stderr}"
        assert (workdir / "secrets" / "postgres" / "POSTGRES_OWNER_VERIFIER").exists()
    finally:
        if workdir != tmp_path:
            shutil.rmtree(workdir)


def test_each_service_gets_only_what_it_needs_and_no_password_a_server_can_do_without(tmp_path):
    assert generate(tmp_path).returncode == 0
    given = {
        path.name: sorted(p.name for p in path.iterdir())
        for path in tmp_path.iterdir()
        if path.name != "store"
    }
    assert given["postgres"] == sorted(
        ["POSTGRES_APP_VERIFIER", "POSTGRES_MONITOR_VERIFIER", "POSTGRES_OWNER_VERIFIER",
         "PGBOUNCER_AUTH_VERIFIER", "ca.crt", "postgres.crt", "postgres.key"]
    )  # fmt: skip
    assert given["redis"] == ["REDIS_PASSWORD_SHA256", "ca.crt", "redis.crt", "redis.key"]
    assert "PGBOUNCER_ADMIN_PASSWORD" not in given["pgbouncer"]
    assert given["app"] == ["DJANGO_SECRET_KEY", "POSTGRES_APP_PASSWORD", "REDIS_PASSWORD", "ca.crt"]
    verifier = (tmp_path / "postgres" / "POSTGRES_APP_VERIFIER").read_text()
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    for directory in (path for path in tmp_path.iterdir() if path.name != "store"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o500
        assert {stat.S_IMODE(path.stat().st_mode) for path in directory.iterdir()} == {0o400}


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("change-me-0123456789abcdef", "is still a placeholder"),
        ("short", "is shorter than 16 characters"),
        ("naïve password 0123456789", "has characters other than printable ASCII"),
    ],
)
def test_a_secret_of_yours_that_cannot_be_used_is_refused_naming_its_file(tmp_path, value, complaint):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "POSTGRES_APP_PASSWORD").write_text(value)
    result = generate(tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {tmp_path}/store/POSTGRES_APP_PASSWORD {complaint}")
    assert not (tmp_path / "app").exists()


def test_a_certificate_is_issued_again_when_its_names_change(tmp_path):
    assert generate(tmp_path).returncode == 0
    before = (tmp_path / "store" / "proxy.crt").read_bytes()
    assert generate(tmp_path, TLS_HOSTS_PROXY="chat.example.com").returncode == 0
    after = tmp_path / "store" / "proxy.crt"
    assert after.read_bytes() != before
    names = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(after)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "DNS:chat.example.com" in names


# Every character class that breaks naive quoting somewhere: a URL (:@/%#?), a libpq
# DSN (space, ', \\), PgBouncer's auth_file ("), a shell ($`), a config file (;=).
ODD_PASSWORDS = {
    "POSTGRES_APP_PASSWORD": "app p@ss:/%25#?&= 'quoted' \\back\\ \"dq\" $HOME `x` ;end",
    "POSTGRES_OWNER_PASSWORD": "owner ' \" \\ : @ / % # ? ; = $ ` { } [ ] ~ ^ | < > ! * ( )",
    "POSTGRES_MONITOR_PASSWORD": "monitor%20with%2Fencoded%3Alooking%40bits",
    "PGBOUNCER_AUTH_PASSWORD": 'auth "double" ""twice"" \\"escaped\\" end',
    "PGBOUNCER_ADMIN_PASSWORD": "admin user=postgres dbname=x password=y",
    "PGBOUNCER_STATS_PASSWORD": "stats # not a comment ; nor this",
    "REDIS_PASSWORD": "redis >not-a-rule <nor-this #hash ~key &chan +@all",
    "DJANGO_SECRET_KEY": 'django\'s key: "q" \\ $x `y` %z #w ;v =u &t ~s 0123456789abcdef0123',
}


@pytest.fixture(scope="module")
def odd_stack(stack):
    """A second native stack, on its own ports and state, whose passwords are all odd."""
    config = Config(
        state_dir=stack.dir.with_name(f"{stack.dir.name}-odd"),
        postgres_port=25532 + OFFSET,
        pgbouncer_port=26532 + OFFSET,
        redis_port=26479 + OFFSET,
        app_port=28100 + OFFSET,
        metrics_port=27100 + OFFSET,
        app_workers=1,
    )
    odd = Stack(config)
    odd.destroy()
    store = odd.path("secrets", "store")
    store.mkdir(parents=True)
    store.chmod(0o700)
    for name, value in ODD_PASSWORDS.items():
        (store / name).write_text(value)
    try:
        odd.up()
        yield odd
    except Exception:
        print(odd.log_tails(), file=sys.stderr)
        raise
    finally:
        odd.destroy()


def test_passwords_with_any_printable_character_work_everywhere(odd_stack):
    """The end-to-end check, on a stack whose every password is odd: the app logs in to
    PgBouncer and Redis, PgBouncer to PostgreSQL, the monitor to both; a message makes
    the whole trip and is read back."""
    for name, value in ODD_PASSWORDS.items():
        assert odd_stack.secret(name) == value, name
    env = {
        **os.environ,
        "STACK_DIR": str(odd_stack.dir),
        "POSTGRES_PORT": str(odd_stack.config.postgres_port),
        "PGBOUNCER_PORT": str(odd_stack.config.pgbouncer_port),
        "REDIS_PORT": str(odd_stack.config.redis_port),
        "APP_PORT": str(odd_stack.config.app_port),
    }
    result = subprocess.run(
        [sys.executable, "-m", "native.smoke"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("  ok  ") == 4
