"""Where the native stack keeps its state, who runs its services, and how to reach them.

The state directory (README, "Native stack"), as laid out by ``Stack.prepare``:

    secrets/   generated secrets: the directory owned by the invoking user, each file
               by the service user, mode 0600
    data/      PostgreSQL's cluster (the service user's)
    opt/       read-only copies of the service folders, and of app/, that the
               services run from (the checkout may be closed to the service user)
    run/       supervisord's socket, config and pid (the invoking user's); one
               writable directory per service inside (run/postgres/, ...)
    logs/      every service's log, written by supervisord (the invoking user's)

As root, PostgreSQL, PgBouncer, Redis and Daphne run as the unprivileged
``postgres`` user; root never writes into a directory that user owns, so no path
root writes through can be replaced by that user.
"""

import hashlib
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from native.profiles import Profile

PROJECT = Path(__file__).resolve().parent.parent
SECRET_NAMES = (
    "DJANGO_SECRET_KEY",
    "POSTGRES_OWNER_PASSWORD",
    "POSTGRES_APP_PASSWORD",
    "POSTGRES_MONITOR_PASSWORD",
    "PGBOUNCER_AUTH_PASSWORD",
    "PGBOUNCER_ADMIN_PASSWORD",
    "PGBOUNCER_STATS_PASSWORD",
    "REDIS_PASSWORD",
)
ROLE_PASSWORDS = {
    "chat_app": "POSTGRES_APP_PASSWORD",
    "chat_owner": "POSTGRES_OWNER_PASSWORD",
    "chat_monitor": "POSTGRES_MONITOR_PASSWORD",
    "pgbouncer_auth": "PGBOUNCER_AUTH_PASSWORD",
    "pgbouncer_admin": "PGBOUNCER_ADMIN_PASSWORD",
    "pgbouncer_stats": "PGBOUNCER_STATS_PASSWORD",
}
# Debian installs pgbouncer (and other daemons) in /usr/sbin, which is not on a
# regular user's PATH: the services get it whoever starts the stack.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# As root, the app runs as the service user from a virtualenv that user can read:
# root's own (.venv) may sit in a private checkout or use a Python under /root.
SERVICE_VENVS = Path("/var/cache/chat-stack")
SYSTEM_PYTHON = "/usr/bin/python3"


class StackError(RuntimeError):
    """Something the user can fix; the message says what."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


@dataclass
class Config:
    """Ports and places, from the environment (README, "Native stack")."""

    state_dir: Path = field(default_factory=lambda: default_state_dir())
    host: str = "127.0.0.1"
    postgres_port: int = field(default_factory=lambda: _env_int("POSTGRES_PORT", 15432))
    pgbouncer_port: int = field(default_factory=lambda: _env_int("PGBOUNCER_PORT", 16432))
    redis_port: int = field(default_factory=lambda: _env_int("REDIS_PORT", 16379))
    app_port: int = field(default_factory=lambda: _env_int("APP_PORT", 8000))
    app_workers: int = field(default_factory=lambda: _env_int("APP_WORKERS", 2))
    start_timeout: float = 90.0


@dataclass(frozen=True)
class AppRun:
    """How the app runs: the profile (native/profiles.py) and settings on top of it."""

    profile: Profile
    extra_env: tuple[tuple[str, str], ...] = ()


class Layout:
    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.dir = self.config.state_dir
        self.service_user = service_user()

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def secret_file(self, name: str) -> Path:
        return self.path("secrets", name)

    def secret(self, name: str) -> str:
        return self.secret_file(name).read_text()

    @property
    def app_url(self) -> str:
        return f"http://{self.config.host}:{self.config.app_port}"

    def dsn(self, role: str, *, through_pgbouncer: bool, dbname: str = "chat") -> str:
        """A libpq connection string for one of the stack's roles."""
        port = self.config.pgbouncer_port if through_pgbouncer else self.config.postgres_port
        return (
            f"host={self.config.host} port={port} dbname={dbname} user={role} "
            f"password={self.secret(ROLE_PASSWORDS[role])} connect_timeout=5"
        )

    def monitor_env(self) -> dict[str, str]:
        """The load test's monitor DSNs: pg_monitor straight to PostgreSQL, SHOW on PgBouncer."""
        return {
            "MONITOR_POSTGRES_DSN": self.dsn("chat_monitor", through_pgbouncer=False),
            "MONITOR_PGBOUNCER_DSN": self.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"),
        }

    def app_env(self, profile: Profile, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        """The app's settings for a profile: what Compose sets in its app service."""
        c = self.config
        db_port = c.pgbouncer_port if profile.through_pgbouncer else c.postgres_port
        env = {
            "DJANGO_SECRET_KEY_FILE": str(self.secret_file("DJANGO_SECRET_KEY")),
            "DJANGO_ALLOWED_HOSTS": f"{c.host},localhost",
            "DJANGO_HTTPS": "false",  # plain HTTP on loopback; see README before exposing it
            "DATABASE_URL": f"postgres://chat_app@{c.host}:{db_port}/chat",
            "DATABASE_PASSWORD_FILE": str(self.secret_file("POSTGRES_APP_PASSWORD")),
            "DATABASE_CONN_MAX_AGE": str(profile.conn_max_age),
            "DIRECT_DATABASE_URL": f"postgres://chat_owner@{c.host}:{c.postgres_port}/chat",
            "DIRECT_DATABASE_PASSWORD_FILE": str(self.secret_file("POSTGRES_OWNER_PASSWORD")),
            "CHANNEL_LAYER_URL_FILE": str(self.secret_file("CHANNEL_LAYER_URL")),
        }
        if profile.pool_max_size is not None:
            env["DATABASE_POOL_MAX_SIZE"] = str(profile.pool_max_size)
        env.update(extra_env or {})
        return env

    def service_env(self, **extra: str) -> dict[str, str]:
        """What every service process gets: a PATH with the system's daemons, and its secrets as files."""
        env = {
            "PATH": f"{self.app_python.parent}:{SYSTEM_PATH}",
            "LANG": "C.UTF-8",
            **{f"{name}_FILE": str(self.secret_file(name)) for name in SECRET_NAMES},
        }
        if self.service_user is not None:
            env.update(HOME=self.service_user.pw_dir, USER=self.service_user.pw_name)
        env.update(extra)
        return env

    @property
    def app_python(self) -> Path:
        """The interpreter the app runs with: this one, or as root the service user's virtualenv's."""
        if self.service_user is None:
            return Path(sys.executable)
        return self.service_venv / "bin" / "python"

    @property
    def service_venv(self) -> Path:
        """As root: a virtualenv of app/requirements.txt the service user can read, built once."""
        requirements = (PROJECT / "app" / "requirements.txt").read_bytes()
        key = hashlib.sha256(requirements + SYSTEM_PYTHON.encode()).hexdigest()[:12]
        return SERVICE_VENVS / f"venv-{key}"


def service_user() -> pwd.struct_passwd | None:
    """None: run services as the invoking user. As root: the `postgres` system user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise StackError(
            "running as root, PostgreSQL and PgBouncer need an unprivileged user: "
            "install the postgresql package (it creates `postgres`), e.g. `make deps`"
        ) from None


def default_state_dir() -> Path:
    """STACK_DIR, else .stack/ in the checkout, else (root, private checkout) /var/lib."""
    if "STACK_DIR" in os.environ:
        return Path(os.environ["STACK_DIR"]).resolve()
    if os.geteuid() != 0 or traversable_by_others(PROJECT):
        return PROJECT / ".stack"
    # Root in a checkout the `postgres` user cannot enter (e.g. under /root or mktemp -d).
    return Path("/var/lib/chat-stack") / hashlib.sha256(bytes(PROJECT)).hexdigest()[:12]


def traversable_by_others(path: Path) -> bool:
    return all(parent.stat().st_mode & 0o001 for parent in [path, *path.parents])
