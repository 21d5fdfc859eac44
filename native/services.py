"""The native stack's services, each declared once: what runs, when it is ready, how it stops.

Each runs through the same entrypoint and config files as its container (the
service folders, staged under the state directory's opt/), under supervisord
(native/supervisor.py renders its config from this table). Start order is the
table's order; each waits for the one before it to be ready. As root, every one
runs as the unprivileged service user (native/layout.py). supervisord restarts
a long-running service that exits, as Compose's `restart: unless-stopped` does;
a one-shot job runs to completion before the next service starts, as Compose's
`service_completed_successfully` makes the app wait for `migrate`.

SERVICES is the stack `up` starts; MONITORING (Prometheus and its two exporters,
Compose's `monitoring` profile) starts only when asked for (`up --monitoring`,
`make monitoring`), after them, so `make up` and the tests pay nothing for it.
"""

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from native.layout import SYSTEM_PATH, AppRun, Layout

LOOPBACK = "127.0.0.1/32"


@dataclass(frozen=True)
class Service:
    name: str
    command: Callable[[Layout], list[str]]
    environment: Callable[[Layout, AppRun], dict[str, str]]
    ready: Callable[[Layout], bool] | None  # None: a one-shot job, done when it exits 0
    stop_signal: str = "TERM"
    stop_wait_s: int = 10  # then SIGKILL to its process group

    @property
    def one_shot(self) -> bool:
        return self.ready is None


# --- readiness ---------------------------------------------------------------------------


def _query(dsn: str, sql: str) -> bool:
    try:
        with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as connection:
            connection.execute(sql, prepare=False)
        return True
    except psycopg.Error:
        return False


def postgres_ready(layout: Layout) -> bool:
    return _query(layout.dsn("chat_monitor", through_pgbouncer=False), "SELECT 1")


def pgbouncer_ready(layout: Layout) -> bool:
    return _query(layout.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"), "SHOW VERSION")


def redis_ready(layout: Layout) -> bool:
    import redis

    c = layout.config
    tls = {"ssl": True, "ssl_ca_certs": str(layout.ca_file)} if c.tls else {}
    client = redis.Redis(
        host=c.host,
        port=c.redis_port,
        username="chat",
        password=layout.secret("REDIS_PASSWORD"),
        socket_timeout=1,
        **tls,
    )
    try:
        return client.ping()
    except redis.RedisError:
        return False
    finally:
        client.close()


def _get(url: str) -> str | None:
    """The body of a 200 answer on loopback, else None."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (http:// built here)
            return response.read().decode() if response.status == 200 else None
    except OSError:
        return None


def app_ready(layout: Layout) -> bool:
    """/healthz is 200: a query made the round trip through PgBouncer."""
    return _get(f"{layout.app_url}/healthz") is not None


def _exporter_ready(port_of: Callable[[Layout], int], up_sample: str) -> Callable[[Layout], bool]:
    """An exporter is ready once its metrics say it reached its server, not merely listening
    (as the Compose health checks)."""

    def ready(layout: Layout) -> bool:
        metrics = _get(f"http://{layout.config.host}:{port_of(layout)}/metrics")
        return metrics is not None and up_sample in metrics.splitlines()

    return ready


def prometheus_ready(layout: Layout) -> bool:
    return _get(f"{layout.prometheus_url}/-/ready") is not None


# --- environments --------------------------------------------------------------------------


def _entrypoint(folder: str, *args: str) -> Callable[[Layout], list[str]]:
    return lambda layout: [str(layout.path("opt", folder, "entrypoint.sh")), *args]


def _app_environment(layout: Layout, app: AppRun) -> dict[str, str]:
    """The app's settings (Layout.app_env), for `serve` and for the `migrate` job alike."""
    c = layout.config
    return layout.service_env(
        **layout.app_env(app.profile, dict(app.extra_env)),
        APP_BIND=c.host,
        APP_PORT=str(c.app_port),
        APP_WORKERS=str(c.app_workers),
        APP_METRICS_BIND=c.host,
        APP_METRICS_PORT=str(c.metrics_port),
        APP_RUN_DIR=str(layout.path("run", "app")),
        PYTHONUNBUFFERED="1",
        # The staged code is read-only to the service user.
        PYTHONDONTWRITEBYTECODE="1",
    )


SERVICES = (
    Service(
        "postgres",
        _entrypoint("postgres"),
        lambda layout, _app: layout.service_env(
            PGDATA=str(layout.path("data", "postgres")),
            POSTGRES_PORT=str(layout.config.postgres_port),
            POSTGRES_LISTEN_ADDRESSES=layout.config.host,
            POSTGRES_SOCKET_DIR=str(layout.path("run", "postgres")),
            # Every client is on loopback here; in Compose each role's own network.
            **dict.fromkeys(
                ("POSTGRES_POOLER_CLIENTS", "POSTGRES_MIGRATE_CLIENTS", "POSTGRES_MONITOR_CLIENTS"), LOOPBACK
            ),
            **layout.secret_env("postgres"),
            **layout.tls_env("postgres"),
        ),
        postgres_ready,
        stop_signal="INT",  # fast shutdown: roll back, checkpoint, exit
        stop_wait_s=30,
    ),
    Service(
        "pgbouncer",
        _entrypoint("pgbouncer"),
        lambda layout, _app: layout.service_env(
            POSTGRES_HOST=layout.config.host,
            POSTGRES_PORT=str(layout.config.postgres_port),
            PGBOUNCER_LISTEN_ADDR=layout.config.host,
            PGBOUNCER_PORT=str(layout.config.pgbouncer_port),
            PGBOUNCER_RUN_DIR=str(layout.path("run", "pgbouncer")),
            PGBOUNCER_APP_CLIENTS=LOOPBACK,
            PGBOUNCER_MONITOR_CLIENTS=LOOPBACK,
            **layout.secret_env("pgbouncer"),
            **layout.tls_env("pgbouncer"),
        ),
        pgbouncer_ready,
    ),
    Service(
        "redis",
        _entrypoint("redis"),
        lambda layout, _app: layout.service_env(
            REDIS_BIND=layout.config.host,
            REDIS_PORT=str(layout.config.redis_port),
            REDIS_RUN_DIR=str(layout.path("run", "redis")),
            **layout.secret_env("redis"),
            **layout.tls_env("redis"),
        ),
        redis_ready,
    ),
    # Migrations straight to PostgreSQL as the schema owner, never through the pooler.
    Service("migrate", _entrypoint("app", "migrate"), _app_environment, None),
    Service(
        "app",
        _entrypoint("app", "serve"),
        _app_environment,
        app_ready,
        # Longer than app/supervisord.conf's stopwaitsecs (20), so the app's own
        # supervisord lets its Daphne processes drain, and stops them itself.
        stop_wait_s=25,
    ),
)


def _monitoring_environment(layout: Layout, run_dir: str, **extra: str) -> dict[str, str]:
    """monitoring/entrypoint.sh's settings for one of its services: Debian's binaries from
    the cache (native/fetch-monitoring.sh) first on PATH, a run directory of its own."""
    return layout.service_env(
        PATH=f"{layout.monitoring_root / 'usr' / 'bin'}:{SYSTEM_PATH}",
        MONITORING_RUN_DIR=str(layout.path("run", run_dir)),
        **extra,
    )


def _monitor_secrets(layout: Layout, *names: str) -> dict[str, str]:
    """The monitor's secrets an exporter needs (NAME_FILE), and the CA to check its server by."""
    monitor = layout.path("secrets", "monitor")
    tls = {"TLS_CA_FILE": str(monitor / "ca.crt")} if layout.config.tls else {}
    return {f"{name}_FILE": str(monitor / name) for name in names} | tls


def _target(layout: Layout, port: int) -> str:
    return f"{layout.config.host}:{port}"


MONITORING = (
    # The stats console user: SHOW commands only (pgbouncer/pgbouncer.ini).
    Service(
        "pgbouncer-exporter",
        _entrypoint("monitoring", "pgbouncer-exporter"),
        lambda layout, _app: _monitoring_environment(
            layout,
            "pgbouncer-exporter",
            PGBOUNCER_HOST=layout.config.host,
            PGBOUNCER_PORT=str(layout.config.pgbouncer_port),
            EXPORTER_LISTEN=layout.config.host,
            EXPORTER_PORT=str(layout.config.pgbouncer_exporter_port),
            **_monitor_secrets(layout, "PGBOUNCER_STATS_PASSWORD"),
        ),
        _exporter_ready(lambda layout: layout.config.pgbouncer_exporter_port, "pgbouncer_up 1"),
    ),
    # chat_monitor: a member of pg_monitor, no table of the app's (postgres/initdb/).
    Service(
        "postgres-exporter",
        _entrypoint("monitoring", "postgres-exporter"),
        lambda layout, _app: _monitoring_environment(
            layout,
            "postgres-exporter",
            POSTGRES_HOST=layout.config.host,
            POSTGRES_PORT=str(layout.config.postgres_port),
            EXPORTER_LISTEN=layout.config.host,
            EXPORTER_PORT=str(layout.config.postgres_exporter_port),
            **_monitor_secrets(layout, "POSTGRES_MONITOR_PASSWORD"),
        ),
        _exporter_ready(lambda layout: layout.config.postgres_exporter_port, "pg_up 1"),
    ),
    # Prometheus has no login: loopback only, as Compose publishes it.
    Service(
        "prometheus",
        _entrypoint("monitoring", "prometheus"),
        lambda layout, _app: _monitoring_environment(
            layout,
            "prometheus",
            PROMETHEUS_LISTEN=layout.config.host,
            PROMETHEUS_PORT=str(layout.config.prometheus_port),
            PROMETHEUS_DATA_DIR=str(layout.path("data", "prometheus")),
            PROMETHEUS_APP_TARGETS=_target(layout, layout.config.metrics_port),
            PROMETHEUS_PGBOUNCER_TARGETS=_target(layout, layout.config.pgbouncer_exporter_port),
            PROMETHEUS_POSTGRES_TARGETS=_target(layout, layout.config.postgres_exporter_port),
        ),
        prometheus_ready,
        stop_wait_s=30,  # SIGTERM: Prometheus writes its head block out
    ),
)
EVERY_SERVICE = SERVICES + MONITORING
SERVICE_NAMES = tuple(service.name for service in EVERY_SERVICE)
LONG_RUNNING = tuple(service.name for service in EVERY_SERVICE if not service.one_shot)
MONITORING_NAMES = tuple(service.name for service in MONITORING)


def service(name: str) -> Service:
    for candidate in EVERY_SERVICE:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no service {name!r}; the stack has {', '.join(SERVICE_NAMES)}")
