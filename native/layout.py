"""Where the native stack keeps its state, who runs its services, and how to reach them.

The state directory (README, "Native stack"), as laid out by ``Stack.prepare``:

    secrets/   made by secrets/generate.py: the originals in store/ (the invoking
               user's, 0700), and one directory per service (the service user's,
               0500) with only what that service needs
    data/      PostgreSQL's cluster, Prometheus' database (the service user's)
    opt/       read-only copies of the service folders, and of app/, that the
               services run from (the checkout may be closed to the service user)
    run/       supervisord's socket, config and pid (the invoking user's); one
               writable directory per service inside (run/postgres/, ...)
    logs/      every service's log, written by supervisord (the invoking user's)

As root, PostgreSQL, PgBouncer, Redis and Daphne (and Prometheus and its
exporters) run as the unprivileged ``postgres`` user; root never writes into a
directory that user owns, so no path root writes through can be replaced by that user.
"""

import hashlib
import os
import pwd
import sys
from dataclasses import dataclass, field
from pathlib import Path

from psycopg.conninfo import make_conninfo

from native.profiles import Profile

PROJECT = Path(__file__).resolve().parent.parent
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
# As root, what the service user runs that is not staged (the app's virtualenv,
# the monitoring binaries) is cached where that user can read it: root's own .venv
# may sit in a private checkout or use a Python under /root.
SERVICE_CACHE = Path("/var/cache/chat-stack")
# The pooled-postgres package, installed beside the app's lock file in every virtualenv.
POOLED_POSTGRES = PROJECT / "pooled-postgres"
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
    metrics_port: int = field(default_factory=lambda: _env_int("APP_METRICS_PORT", 9100))
    # make monitoring (native/services.py): Prometheus and its two exporters.
    prometheus_port: int = field(default_factory=lambda: _env_int("PROMETHEUS_PORT", 9090))
    pgbouncer_exporter_port: int = field(default_factory=lambda: _env_int("PGBOUNCER_EXPORTER_PORT", 9127))
    postgres_exporter_port: int = field(default_factory=lambda: _env_int("POSTGRES_EXPORTER_PORT", 9187))
    # TLS between the app, PgBouncer, PostgreSQL and Redis. STACK_TLS=off exists to
    # measure what TLS costs (make bench), not to run without it.
    tls: bool = field(default_factory=lambda: os.environ.get("STACK_TLS", "on") != "off")
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

    def secret(self, name: str) -> str:
        """An original from the secrets store (the invoking user's)."""
        return self.path("secrets", "store", name).read_text().strip()

    @property
    def ca_file(self) -> Path:
        """The private CA's certificate: what a client of the stack trusts."""
        return self.path("secrets", "store", "ca.crt")

    def secret_env(self, consumer: str) -> dict[str, str]:
        """NAME_FILE for every secret in a service's own directory (secrets/generate.py)."""
        directory = self.path("secrets", consumer)
        return {f"{path.name}_FILE": str(path) for path in sorted(directory.iterdir()) if path.name.isupper()}

    def tls_env(self, server: str) -> dict[str, str]:
        """A TLS server's certificate, key and the CA its peers' certificates come from."""
        if not self.config.tls:
            return {}
        directory = self.path("secrets", server)
        return {
            "TLS_CERT_FILE": str(directory / f"{server}.crt"),
            "TLS_KEY_FILE": str(directory / f"{server}.key"),
            "TLS_CA_FILE": str(directory / "ca.crt"),
        }

    def tls_query(self, consumer: str) -> str:
        """A libpq URL's query for a client that checks the server's certificate and name."""
        if not self.config.tls:
            return "?sslmode=disable"
        return f"?sslmode=verify-full&sslrootcert={self.path('secrets', consumer, 'ca.crt')}"

    @property
    def app_url(self) -> str:
        return f"http://{self.config.host}:{self.config.app_port}"

    @property
    def metrics_url(self) -> str:
        """The app's metrics, all its Daphne processes added up (app/chat_site/metrics_server.py)."""
        return f"http://{self.config.host}:{self.config.metrics_port}/metrics"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.config.host}:{self.config.prometheus_port}"

    def dsn(self, role: str, *, through_pgbouncer: bool, dbname: str = "chat", password: bool = True) -> str:
        """A libpq connection string for one of the stack's roles (TLS, the server checked)."""
        port = self.config.pgbouncer_port if through_pgbouncer else self.config.postgres_port
        tls = {"sslmode": "verify-full", "sslrootcert": str(self.ca_file)} if self.config.tls else {}
        return make_conninfo(
            host=self.config.host,
            port=port,
            dbname=dbname,
            user=role,
            connect_timeout=5,
            **({"password": self.secret(ROLE_PASSWORDS[role])} if password else {}),
            **tls,
        )

    def monitor_env(self) -> dict[str, str]:
        """The load test's monitor: pg_monitor straight to PostgreSQL, SHOW on PgBouncer's
        console; the passwords as files (MONITOR_*_PASSWORD_FILE), not in the DSNs."""
        monitor = self.path("secrets", "monitor")
        return {
            "MONITOR_POSTGRES_DSN": self.dsn("chat_monitor", through_pgbouncer=False, password=False),
            "MONITOR_POSTGRES_PASSWORD_FILE": str(monitor / "POSTGRES_MONITOR_PASSWORD"),
            "MONITOR_PGBOUNCER_DSN": self.dsn(
                "pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer", password=False
            ),
            "MONITOR_PGBOUNCER_PASSWORD_FILE": str(monitor / "PGBOUNCER_STATS_PASSWORD"),
        }

    def app_env(self, profile: Profile, extra_env: dict[str, str] | None = None) -> dict[str, str]:
        """The app's settings for a profile: what Compose sets in its app service."""
        c = self.config
        db_port = c.pgbouncer_port if profile.through_pgbouncer else c.postgres_port
        app, migrate = self.path("secrets", "app"), self.path("secrets", "migrate")
        env = {
            "DJANGO_SECRET_KEY_FILE": str(app / "DJANGO_SECRET_KEY"),
            "DJANGO_ALLOWED_HOSTS": f"{c.host},localhost",
            "DJANGO_HTTPS": "false",  # the browser's hop: plain HTTP on loopback (README, "Security")
            "DATABASE_URL": f"postgres://chat_app@{c.host}:{db_port}/chat{self.tls_query('app')}",
            "DATABASE_PASSWORD_FILE": str(app / "POSTGRES_APP_PASSWORD"),
            "DATABASE_CONN_MAX_AGE": str(profile.conn_max_age),
            "DIRECT_DATABASE_URL": f"postgres://chat_owner@{c.host}:{c.postgres_port}/chat{self.tls_query('migrate')}",
            "DIRECT_DATABASE_PASSWORD_FILE": str(migrate / "POSTGRES_OWNER_PASSWORD"),
            "CHANNEL_LAYER_URL": f"{'rediss' if c.tls else 'redis'}://chat@{c.host}:{c.redis_port}/0",
            "CHANNEL_LAYER_PASSWORD_FILE": str(app / "REDIS_PASSWORD"),
        }
        if c.tls:
            env["CHANNEL_LAYER_CA_FILE"] = str(app / "ca.crt")
        if profile.pool_max_size is not None:
            env["DATABASE_POOL_MAX_SIZE"] = str(profile.pool_max_size)
        env.update(extra_env or {})
        return env

    def service_env(self, **extra: str) -> dict[str, str]:
        """What every service process gets: a PATH with the system's daemons."""
        env = {"PATH": f"{self.app_python.parent}:{SYSTEM_PATH}", "LANG": "C.UTF-8"}
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
        digest = hashlib.sha256((PROJECT / "app" / "requirements.txt").read_bytes() + SYSTEM_PYTHON.encode())
        for path in [POOLED_POSTGRES / "pyproject.toml", *sorted(POOLED_POSTGRES.glob("src/**/*.py"))]:
            digest.update(bytes(path.relative_to(POOLED_POSTGRES)) + path.read_bytes())
        key = digest.hexdigest()[:12]
        return SERVICE_CACHE / f"venv-{key}"

    @property
    def monitoring_root(self) -> Path:
        """Where native/fetch-monitoring.sh unpacks Prometheus and the exporters: a cache
        shared by every stack of the user (the state directory's `destroy` keeps it)."""
        if self.service_user is not None:
            return SERVICE_CACHE / "monitoring"
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(cache) / "chat-stack" / "monitoring"


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
