"""`docker compose up` for real: the images, the Compose file and the wiring between services.

Each test talks to the running containers: through the published port as a user
would, and with `docker exec` into PostgreSQL and PgBouncer to see what they saw.
"""

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from compose_harness import APP_PORT, LOCUST_PORT, LONG_RUNNING, PROJECT_NAME, ComposeStack

from probes.chat import ChatHttp, ChatSocket
from probes.connections import APP_ROLE, connection_bound

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

ONE_SHOT_TIMEOUT_S = 60


def test_every_service_is_healthy_and_the_migration_job_succeeded(compose_stack: ComposeStack):
    for service in LONG_RUNNING:
        status, health, _ = compose_stack.state(service)
        assert (status, health) == ("running", "healthy"), service
    status, _, exit_code = compose_stack.state("migrate")
    assert (status, exit_code) == ("exited", 0)
    migrations = compose_stack.psql("SELECT count(*) AS n FROM django_migrations WHERE app = 'chat'")
    assert int(migrations[0]["n"]) >= 1


def test_only_the_app_is_published_and_only_on_loopback(compose_stack: ComposeStack):
    published = compose_stack.compose("port", "app", "8000").stdout.strip()
    assert published == f"127.0.0.1:{APP_PORT}"
    for service in ("postgres", "pgbouncer", "redis"):
        ports = compose_stack.docker(
            "inspect", "--format", "{{json .NetworkSettings.Ports}}", compose_stack.container(service)
        ).stdout
        assert "HostPort" not in ports, f"{service} publishes a port: {ports}"


def test_every_running_container_is_locked_down(compose_stack: ComposeStack):
    """What docker-compose.yml promises (x-hardening), read back from the engine for every
    container that runs: no root, no capabilities, no privilege gain, nothing writable
    but volumes and tmpfs, and no published port but the app's, on loopback only."""
    _up_healthy(compose_stack, "locust-master", "locust-worker")  # the loadtest profile too
    ids = compose_stack.docker(
        "ps", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}"
    ).stdout.split()
    containers = json.loads(compose_stack.docker("inspect", *ids).stdout)
    services = set()
    for container in containers:
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        services.add(service)
        host = container["HostConfig"]
        user = container["Config"]["User"].split(":")[0]
        assert user not in ("", "0", "root"), f"{service} runs as root"
        assert host["CapDrop"] == ["ALL"], f"{service} keeps capabilities"
        assert not host["CapAdd"], f"{service} adds capabilities {host['CapAdd']}"
        assert "no-new-privileges:true" in (host["SecurityOpt"] or []), service
        assert host["ReadonlyRootfs"], f"{service} has a writable root filesystem"
        assert not host["Privileged"], service
        published = {
            port: [(binding["HostIp"], binding["HostPort"]) for binding in bindings]
            for port, bindings in (container["NetworkSettings"]["Ports"] or {}).items()
            if bindings
        }
        expected = {
            "app": {"8000/tcp": [("127.0.0.1", str(APP_PORT))]},
            "locust-master": {"8089/tcp": [("127.0.0.1", str(LOCUST_PORT))]},
        }.get(service, {})
        assert published == expected, f"{service} publishes {published}"
    assert set(LONG_RUNNING) <= services
    compose_stack.compose("stop", "locust-master", "locust-worker", profile=True, timeout=60)


def test_healthz_answers_through_the_published_port(compose_stack: ComposeStack):
    result = ChatHttp(compose_stack.app_url).request("GET", "/healthz")
    assert result.status == 200
    assert result.body == {"status": "ok", "database": "ok"}


def test_websocket_messages_are_acknowledged_and_stored(compose_stack: ComposeStack):
    room = f"c-{uuid.uuid4().hex[:12]}"
    ChatHttp(compose_stack.app_url).ensure_room(room)
    socket = ChatSocket(compose_stack.app_url, room, "compose-test")
    try:
        assert socket.ready == {"type": "ready", "room": room, "author": "compose-test"}
        acks = {}
        for n in range(10):
            client_id = f"m{n}-{uuid.uuid4().hex[:8]}"
            frame = socket.post(f"hello {n} from the Compose test", client_id)
            assert frame["type"] == "ack", frame
            acks[client_id] = frame["id"]
    finally:
        socket.close()

    rows = compose_stack.psql(
        "SELECT m.id, m.client_id, m.author, m.text FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = :'room' ORDER BY m.id",
        room=room,
    )
    assert {row["client_id"]: int(row["id"]) for row in rows} == acks
    assert {row["author"] for row in rows} == {"compose-test"}


# Each poster stays well under the server's per-socket limit (CHAT_RATE_PER_S, 20/s,
# burst 40, at its default in the Compose stack): this test measures connections, and a
# poster the limiter refused would measure the limiter.
POSTER_RATE_PER_S = 10


def _load(base_url: str, room: str, seconds: float) -> int:
    """Concurrent HTTP reads and paced WebSocket posts for a few seconds; returns requests made.

    Every worker stops by the deadline; an error in any of them is raised here, as it was.
    """
    deadline = time.monotonic() + seconds

    def reader() -> int:
        api, done = ChatHttp(base_url), 0
        while time.monotonic() < deadline:
            result = api.request("GET", f"/api/rooms/{room}/messages?limit=20")
            assert result.status == 200, result
            done += 1
        return done

    def poster(worker: int) -> int:
        socket, done = ChatSocket(base_url, room, f"load-{worker}"), 0
        try:
            while (now := time.monotonic()) < deadline:
                reply = socket.post(f"load {worker}/{done}", f"l{worker}-{done}-{uuid.uuid4().hex[:6]}")
                assert reply["type"] == "ack", reply
                done += 1
                time.sleep(max(0.0, now + 1 / POSTER_RATE_PER_S - time.monotonic()))
        finally:
            socket.close()
        return done

    with ThreadPoolExecutor(max_workers=24) as pool:
        futures = [pool.submit(reader) for _ in range(16)] + [pool.submit(poster, w) for w in range(8)]
        return sum(future.result(timeout=seconds + 30) for future in futures)


def test_app_role_reaches_postgres_only_through_pgbouncer_within_the_pool_bound(
    compose_stack: ComposeStack,
):
    bound = connection_bound()
    room = f"c-{uuid.uuid4().hex[:12]}"
    ChatHttp(compose_stack.app_url).ensure_room(room)
    app_backends_sql = (
        "SELECT pid, host(client_addr) AS addr FROM pg_stat_activity "
        "WHERE datname = 'chat' AND usename = :'role' AND backend_type = 'client backend'"
    )

    peak = 0
    samples = 0
    with ThreadPoolExecutor(max_workers=1) as loader:
        load = loader.submit(_load, compose_stack.app_url, room, 8)
        while not load.done() and samples < 40:  # bounded: at most 40 samples, one every ~0.3 s
            peak = max(peak, len(compose_stack.psql(app_backends_sql, role=APP_ROLE)))
            samples += 1
            time.sleep(0.2)
        requests = load.result(timeout=60)  # the load's own error, if it failed
    assert requests > 50
    assert 1 <= peak <= bound, f"peak {peak} server connections for {APP_ROLE}, bound {bound}"

    # After the load: every backend of the app role is one of PgBouncer's server
    # connections (same PID), and connects from PgBouncer's address.
    backends = compose_stack.psql(app_backends_sql, role=APP_ROLE)
    servers = [row for row in compose_stack.pgbouncer_show("SERVERS") if row["user"] == APP_ROLE]
    assert backends, "no server connection for the app role left to compare"
    assert {int(row["pid"]) for row in backends} <= {int(row["remote_pid"]) for row in servers}
    assert {row["addr"] for row in backends} == {compose_stack.ip_address("pgbouncer", "database")}
    assert len(backends) <= bound


def _connect_from_app(compose_stack: ComposeStack, host: str, port: int) -> str:
    """Try a TCP connection from inside the app container; returns "connected" or the error."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({host!r}, {port}), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    return compose_stack.docker("exec", compose_stack.container("app"), "python", "-c", probe).stdout.strip()


def test_the_app_container_cannot_reach_postgres(compose_stack: ComposeStack):
    # The probe works: PgBouncer, on the app's network, answers.
    assert _connect_from_app(compose_stack, "pgbouncer", 6432) == "connected"
    # PostgreSQL's name does not resolve on the app's networks...
    assert _connect_from_app(compose_stack, "postgres", 5432).startswith("gaierror")
    # ...and its address is not routable from them either.
    address = compose_stack.ip_address("postgres", "database")
    assert address
    assert _connect_from_app(compose_stack, address, 5432) != "connected"


@pytest.mark.parametrize(
    ("service", "secret"),
    [
        ("postgres", "POSTGRES_APP_PASSWORD"),
        ("pgbouncer", "PGBOUNCER_AUTH_PASSWORD"),
        ("redis", "REDIS_PASSWORD"),
        ("app", "DJANGO_SECRET_KEY"),
    ],
)
def test_each_image_refuses_a_placeholder_secret(compose_stack: ComposeStack, service, secret):
    """.env.example's values must never run: each image's entrypoint refuses them."""
    good = compose_stack.secrets
    env = {
        "postgres": [
            "POSTGRES_OWNER_PASSWORD",
            "POSTGRES_APP_PASSWORD",
            "PGBOUNCER_AUTH_PASSWORD",
            "POSTGRES_MONITOR_PASSWORD",
        ],
        "pgbouncer": ["PGBOUNCER_AUTH_PASSWORD", "PGBOUNCER_ADMIN_PASSWORD", "PGBOUNCER_STATS_PASSWORD"],
        "redis": ["REDIS_PASSWORD"],
        "app": ["DJANGO_SECRET_KEY"],
    }[service]
    args = []
    for name in env:
        args += ["--env", f"{name}={'change-me-' + name.lower() if name == secret else good[name]}"]
    if service == "app":
        args += [
            "--env",
            "DJANGO_ALLOWED_HOSTS=app",
            "--env",
            "DATABASE_URL=postgres://chat_app@nowhere:1/chat",
        ]
    image = f"chat-stack/{service}:local"
    result = compose_stack.docker(
        "run",
        "--rm",
        "--network",
        "none",
        *args,
        image,
        *(["migrate"] if service == "app" else []),
        timeout=ONE_SHOT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode != 0
    assert f"{secret} is still a placeholder" in result.stdout + result.stderr


def _up_healthy(compose_stack: ComposeStack, *services: str, scale: dict[str, int] | None = None) -> None:
    """`up` some services of the loadtest profile and wait (bounded) until each container is healthy."""
    scaling = [f"--scale={service}={count}" for service, count in (scale or {}).items()]
    if compose_stack.v2:
        compose_stack.compose("up", "--detach", "--wait", *scaling, *services, profile=True, timeout=240)
        return
    compose_stack.compose("up", "--detach", *scaling, *services, profile=True, timeout=240)
    deadline = time.monotonic() + 120
    for service in services:
        for container in compose_stack.containers(service):
            while compose_stack.container_state(container)[1] != "healthy":
                state = compose_stack.container_state(container)
                assert time.monotonic() < deadline and state[0] == "running", f"{service}: {state}"
                time.sleep(2)


def test_locust_master_and_scaled_workers_come_up(compose_stack: ComposeStack):
    _up_healthy(compose_stack, "locust-master", "locust-worker", scale={"locust-worker": 2})
    assert len(compose_stack.containers("locust-worker")) == 2
    published = compose_stack.compose("port", "locust-master", "8089", profile=True).stdout.strip()
    assert published == f"127.0.0.1:{LOCUST_PORT}"
    deadline = time.monotonic() + 30
    while (
        "2 workers connected"
        not in compose_stack.docker("logs", compose_stack.container("locust-master")).stderr
    ):
        assert time.monotonic() < deadline, "the master never saw both workers"
        time.sleep(1)
    compose_stack.compose("stop", "locust-master", "locust-worker", profile=True, timeout=60)


def test_the_loadtest_proof_exits_0(compose_stack: ComposeStack):
    _up_healthy(compose_stack, "app-naive")
    result = compose_stack.compose(
        "run", "--rm", "-T", "--no-deps", "loadtest", profile=True, timeout=900, check=False
    )
    print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    assert result.returncode == 0, f"loadtest exited {result.returncode}:\n{result.stdout[-3000:]}"
