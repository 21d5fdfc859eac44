"""The stack as local processes: PostgreSQL, PgBouncer, Redis and Daphne on loopback.

Each service runs through the same entrypoint and config files as its container
(postgres/, pgbouncer/, redis/, app/). PostgreSQL, PgBouncer and Redis run as an
unprivileged user (the invoking user, or ``postgres`` when invoked as root).
Every process is recorded in a pid file with its start time, and stopped by
that PID only.
"""

import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from native.profiles import PROFILES, SHIPPED, Profile

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
# Service folders copied into the state directory at every start, where the
# unprivileged service user can read them even when the checkout is private.
STAGED = ("postgres", "pgbouncer", "redis", "lib")


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


class Stack:
    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.dir = self.config.state_dir
        self.service_user = _service_user()

    # --- paths -------------------------------------------------------------------

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
        passwords = {
            "chat_app": "POSTGRES_APP_PASSWORD",
            "chat_owner": "POSTGRES_OWNER_PASSWORD",
            "chat_monitor": "POSTGRES_MONITOR_PASSWORD",
            "pgbouncer_auth": "PGBOUNCER_AUTH_PASSWORD",
            "pgbouncer_admin": "PGBOUNCER_ADMIN_PASSWORD",
            "pgbouncer_stats": "PGBOUNCER_STATS_PASSWORD",
        }
        port = self.config.pgbouncer_port if through_pgbouncer else self.config.postgres_port
        return (
            f"host={self.config.host} port={port} dbname={dbname} user={role} "
            f"password={self.secret(passwords[role])} connect_timeout=5"
        )

    # --- lifecycle ---------------------------------------------------------------

    def up(self, profile: Profile = SHIPPED) -> None:
        """Start every service that is not running, then wait until each is ready."""
        self._prepare()
        self._start("postgres", self._postgres_command(), self._postgres_ready)
        self._start("pgbouncer", self._pgbouncer_command(), self._pgbouncer_ready)
        self._start("redis", self._redis_command(), self._redis_ready)
        self.migrate()
        if self.running_profile() not in (None, profile.name):
            self.stop("app")
        self._start("app", self._app_command("serve", profile), self._app_ready)
        self.path("run", "app.profile").write_text(profile.name)

    def restart_app(self, profile: Profile) -> None:
        self.stop("app")
        self._start("app", self._app_command("serve", profile), self._app_ready)
        self.path("run", "app.profile").write_text(profile.name)

    def restart(self, name: str) -> None:
        """Stop a data service and start it again, waiting until it is ready (fault injection)."""
        command, ready = {
            "postgres": (self._postgres_command, self._postgres_ready),
            "pgbouncer": (self._pgbouncer_command, self._pgbouncer_ready),
            "redis": (self._redis_command, self._redis_ready),
        }[name]
        self.stop(name)
        self._start(name, command(), ready)

    def kill_worker(self, pid: int, sig: int = signal.SIGKILL) -> None:
        """Signal one of the app's Daphne processes, and only such a process."""
        if pid not in self.daphne_pids():
            raise StackError(f"{pid} is not one of this stack's Daphne processes")
        os.kill(pid, sig)

    def daphne_pids(self) -> list[int]:
        """The Daphne processes supervisord runs for the app."""
        supervisor = self.pid("app")
        if supervisor is None:
            return []
        children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
        return [int(pid) for pid in children if "daphne" in _cmdline(int(pid))]

    def log_tails(self, lines: int = 30) -> str:
        """The last lines of every service's log, each under its file name (for a failure report)."""
        return "\n".join(
            f"--- {log.name} (last {lines} lines)\n{_tail(log, lines)}"
            for log in sorted(self.path("logs").glob("*.log"))
        )

    def down(self) -> None:
        for name in ("app", "redis", "pgbouncer", "postgres"):
            self.stop(name)

    def destroy(self) -> None:
        """Stop everything and delete the state directory (data and secrets)."""
        self.down()
        shutil.rmtree(self.dir, ignore_errors=True)

    def migrate(self) -> None:
        command = self._app_command("migrate", SHIPPED)
        log = self.path("logs", "migrate.log")
        with log.open("ab") as out:
            result = subprocess.run(command.argv, env=command.env, stdout=out, stderr=out)
        if result.returncode:
            raise StackError(f"migrations failed:\n{_tail(log)}")

    def status(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in ("postgres", "pgbouncer", "redis", "app")}

    def running_profile(self) -> str | None:
        marker = self.path("run", "app.profile")
        return marker.read_text() if self.pid("app") and marker.exists() else None

    # --- processes ----------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        """The service's PID if the process recorded at start is still that process."""
        pid_file = self.path("run", f"{name}.pid")
        try:
            pid, started = pid_file.read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        return int(pid) if _start_time(int(pid)) == started else None

    def stop(self, name: str, timeout: float = 20.0) -> None:
        pid = self.pid(name)
        if pid is not None:
            # PostgreSQL: SIGINT is "fast shutdown"; the others stop on SIGTERM.
            os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            if self.pid(name):
                os.killpg(pid, signal.SIGKILL)  # its own session: children go too
                while self.pid(name):
                    time.sleep(0.1)
        self.path("run", f"{name}.pid").unlink(missing_ok=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to a running service (fault injection)."""
        pid = self.pid(name)
        if pid is None:
            raise StackError(f"{name} is not running")
        os.kill(pid, sig)

    def _start(self, name: str, command: "Command", ready) -> None:
        if self.pid(name) is None:
            log = self.path("logs", f"{name}.log")
            with log.open("ab") as out:
                process = subprocess.Popen(
                    command.argv,
                    env=command.env,
                    stdin=subprocess.DEVNULL,
                    # The state directory, not the caller's: the service user may not
                    # be able to enter a private checkout (find, for one, then fails).
                    cwd=self.dir,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # its own process group, stopped as one
                    user=command.user,
                    group=command.group,
                    extra_groups=[] if command.user is not None else None,
                )
            pid_file = self.path("run", f"{name}.pid")
            pid_file.write_text(f"{process.pid} {_start_time(process.pid)}")
        deadline = time.monotonic() + self.config.start_timeout
        while not ready():
            if self.pid(name) is None:
                raise StackError(f"{name} exited during start-up:\n{_tail(self.path('logs', f'{name}.log'))}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} not ready after {self.config.start_timeout:g}s:\n"
                    f"{_tail(self.path('logs', f'{name}.log'))}"
                )
            time.sleep(0.2)

    # --- set-up -------------------------------------------------------------------

    def _prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _check_state_dir(self.dir, self.service_user)
        for sub in ("secrets", "data", "run", "logs", "opt"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        for folder in STAGED:
            shutil.copytree(PROJECT / folder, self.path("opt", folder), dirs_exist_ok=True)
        for name in SECRET_NAMES:
            target = self.secret_file(name)
            if not target.exists():
                target.write_text(secrets.token_hex(32))
                target.chmod(0o600)
        channel_layer_url = self.secret_file("CHANNEL_LAYER_URL")
        channel_layer_url.write_text(
            f"redis://:{self.secret('REDIS_PASSWORD')}@{self.config.host}:{self.config.redis_port}/0"
        )
        channel_layer_url.chmod(0o600)
        if self.service_user is not None:
            # PostgreSQL, PgBouncer and Redis run as this user and read their secrets.
            uid, gid = self.service_user.pw_uid, self.service_user.pw_gid
            owned = [self.dir, *(self.path(sub) for sub in ("secrets", "data", "run", "logs"))]
            for path in [*owned, *self.path("secrets").iterdir(), *self.path("logs").iterdir()]:
                os.chown(path, uid, gid)
            for path in [self.path("opt"), *self.path("opt").rglob("*")]:
                os.chown(path, uid, gid)

    def _service_env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            **{f"{name}_FILE": str(self.secret_file(name)) for name in SECRET_NAMES},
        }
        if self.service_user is not None:
            env["HOME"] = self.service_user.pw_dir
        env.update(extra)
        return env

    def _as_service_user(self, argv: list[str], env: dict[str, str]) -> "Command":
        user = self.service_user
        return Command(argv, env, user.pw_uid if user else None, user.pw_gid if user else None)

    def _postgres_command(self) -> "Command":
        return self._as_service_user(
            [str(self.path("opt", "postgres", "entrypoint.sh"))],
            self._service_env(
                PGDATA=str(self.path("data", "postgres")),
                POSTGRES_PORT=str(self.config.postgres_port),
                POSTGRES_LISTEN_ADDRESSES=self.config.host,
                POSTGRES_SOCKET_DIR=str(self.path("run")),
            ),
        )

    def _pgbouncer_command(self) -> "Command":
        return self._as_service_user(
            [str(self.path("opt", "pgbouncer", "entrypoint.sh"))],
            self._service_env(
                POSTGRES_HOST=self.config.host,
                POSTGRES_PORT=str(self.config.postgres_port),
                PGBOUNCER_LISTEN_ADDR=self.config.host,
                PGBOUNCER_PORT=str(self.config.pgbouncer_port),
                PGBOUNCER_RUN_DIR=str(self.path("run", "pgbouncer")),
            ),
        )

    def _redis_command(self) -> "Command":
        return self._as_service_user(
            [str(self.path("opt", "redis", "entrypoint.sh"))],
            self._service_env(
                REDIS_BIND=self.config.host,
                REDIS_PORT=str(self.config.redis_port),
                REDIS_RUN_DIR=str(self.path("run", "redis")),
            ),
        )

    def app_env(self, profile: Profile) -> dict[str, str]:
        """The app's environment for a profile: what Compose sets in its app service."""
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
        return env

    def _app_command(self, action: str, profile: Profile) -> "Command":
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") or key.startswith("CHAT_")
        }
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
        env.update(self.app_env(profile))
        env.update(
            APP_BIND=self.config.host,
            APP_PORT=str(self.config.app_port),
            APP_WORKERS=str(self.config.app_workers),
            APP_RUN_DIR=str(self.path("run")),
            PYTHONUNBUFFERED="1",
        )
        return Command([str(PROJECT / "app" / "entrypoint.sh"), action], env, None, None)

    # --- readiness ------------------------------------------------------------------

    def _postgres_ready(self) -> bool:
        return _query(self.dsn("chat_monitor", through_pgbouncer=False), "SELECT 1")

    def _pgbouncer_ready(self) -> bool:
        return _query(self.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"), "SHOW VERSION")

    def _redis_ready(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.secret("CHANNEL_LAYER_URL"), socket_timeout=1)
        try:
            return client.ping()
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _app_ready(self) -> bool:
        try:
            url = f"{self.app_url}/healthz"  # http:// built here, never user input
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                return response.status == 200
        except OSError:
            return False


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str]
    user: int | None
    group: int | None


def _query(dsn: str, sql: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql)
        return True
    except psycopg.Error:
        return False


def _service_user() -> pwd.struct_passwd | None:
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
    if os.geteuid() != 0 or _traversable_by_others(PROJECT):
        return PROJECT / ".stack"
    # Root in a checkout the `postgres` user cannot enter (e.g. under /root or mktemp -d).
    return Path("/var/lib/chat-stack") / hashlib.sha256(bytes(PROJECT)).hexdigest()[:12]


def _traversable_by_others(path: Path) -> bool:
    return all(parent.stat().st_mode & 0o001 for parent in [path, *path.parents])


def _check_state_dir(state_dir: Path, user: pwd.struct_passwd | None) -> None:
    if user is not None and not _traversable_by_others(state_dir.parent):
        raise StackError(
            f"{state_dir.parent} is not traversable by the `{user.pw_name}` user that runs "
            f"PostgreSQL: set STACK_DIR outside it, e.g. STACK_DIR=/var/lib/chat-stack/demo"
        )


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: tells a PID from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # exited, waiting to be reaped
        return None
    return fields[19]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def profile_named(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise StackError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
