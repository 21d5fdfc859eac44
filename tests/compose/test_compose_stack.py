"""`docker compose up` for real: the images, the Compose file and the wiring between services.

Each test talks to the running containers: through the published port as a user
would, and with `docker exec` into PostgreSQL and PgBouncer to see what they saw.
"""

import dataclasses
import http.client
import json
import os
import re
import socket as socket_module
import ssl
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket
from compose_harness import (
    EVERY_PROFILE,
    IMAGE_TAG,
    LOCUST_PORT,
    LONG_RUNNING,
    PROJECT_NAME,
    PROXY_PORT,
    ComposeStack,
    drive_load,
)

from probes.chat import ChatHttp, ChatSocket
from probes.connections import APP_ROLE, connection_bound

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

# Under Compose v2 only: what the images do once up (the proxy's limits, the proof's run),
# which does not depend on the Compose that started them. Each costs a minute or so;
# Compose 1.29 still runs everything that reads the file: placement, networks, secrets,
# health, hardening, the profiles (the Locust test) and the bound under load.
v2_only = pytest.mark.parametrize("compose_stack", ["v2"], indirect=True)

ONE_SHOT_TIMEOUT_S = 60


def test_every_service_is_healthy_and_the_migration_job_succeeded(compose_stack: ComposeStack):
    for service in LONG_RUNNING:
        status, health, _ = compose_stack.state(service)
        assert (status, health) == ("running", "healthy"), service
    status, _, exit_code = compose_stack.state("migrate")
    assert (status, exit_code) == ("exited", 0)
    migrations = compose_stack.psql("SELECT count(*) AS n FROM django_migrations WHERE app = 'chat'")
    assert int(migrations[0]["n"]) >= 1


def test_only_the_proxy_is_published_and_only_on_loopback(compose_stack: ComposeStack):
    published = compose_stack.compose("port", "proxy", "8443").stdout.strip()
    assert published == f"127.0.0.1:{PROXY_PORT}"
    for service in ("app", "postgres", "pgbouncer", "redis"):  # Daphne's port included
        ports = compose_stack.docker(
            "inspect", "--format", "{{json .NetworkSettings.Ports}}", compose_stack.container(service)
        ).stdout
        assert "HostPort" not in ports, f"{service} publishes a port: {ports}"


def test_every_running_container_is_locked_down(compose_stack: ComposeStack):
    """What docker-compose.yml promises (x-hardening), read back from the engine for every
    container that runs: no root, no capabilities, no privilege gain, nothing writable
    but volumes and tmpfs, and no published port but the proxy's, on loopback only."""
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
            "proxy": {"8443/tcp": [("127.0.0.1", str(PROXY_PORT))]},
            "locust-master": {"8089/tcp": [("127.0.0.1", str(LOCUST_PORT))]},
        }.get(service, {})
        assert published == expected, f"{service} publishes {published}"
    assert set(LONG_RUNNING) <= services
    compose_stack.compose("stop", "locust-master", "locust-worker", profiles=EVERY_PROFILE, timeout=60)


def test_healthz_answers_through_the_published_port(compose_stack: ComposeStack):
    result = ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file()).request("GET", "/healthz")
    assert result.status == 200
    assert result.body == {"status": "ok", "database": "ok"}


def test_websocket_messages_are_acknowledged_and_stored(compose_stack: ComposeStack):
    room = f"c-{uuid.uuid4().hex[:12]}"
    ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file()).ensure_room(room)
    socket = ChatSocket(
        compose_stack.app_url, room, "compose-test", sslopt={"ca_certs": compose_stack.ca_file()}
    )
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


def test_app_role_reaches_postgres_only_through_pgbouncer_within_the_pool_bound(
    compose_stack: ComposeStack,
):
    bound = connection_bound()
    room = f"c-{uuid.uuid4().hex[:12]}"
    ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file()).ensure_room(room)
    app_backends_sql = (
        "SELECT pid, host(client_addr) AS addr FROM pg_stat_activity "
        "WHERE datname = 'chat' AND usename = :'role' AND backend_type = 'client backend'"
    )

    peak = 0
    samples = 0
    with ThreadPoolExecutor(max_workers=1) as loader:
        load = loader.submit(drive_load, compose_stack.direct_url, room, 8)
        while not load.done() and samples < 40:  # bounded: at most 40 samples, one every ~0.3 s
            peak = max(peak, len(compose_stack.psql(app_backends_sql, role=APP_ROLE)))
            samples += 1
            time.sleep(0.2)
        done = load.result(timeout=60)  # the load's own error, if it failed
    assert done.reads + done.posts > 50
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


SECRET_FILES = {
    "postgres": [
        "POSTGRES_OWNER_VERIFIER",
        "POSTGRES_APP_VERIFIER",
        "PGBOUNCER_AUTH_VERIFIER",
        "POSTGRES_MONITOR_VERIFIER",
    ],
    "pgbouncer": ["PGBOUNCER_AUTH_PASSWORD", "PGBOUNCER_ADMIN_VERIFIER", "PGBOUNCER_STATS_VERIFIER"],
    "redis": ["REDIS_PASSWORD_SHA256"],
    "app": ["DJANGO_SECRET_KEY"],
}


@pytest.mark.parametrize(("service", "secret"), [(s, names[-1]) for s, names in SECRET_FILES.items()])
def test_each_image_refuses_a_placeholder_secret(compose_stack: ComposeStack, tmp_path, service, secret):
    """A placeholder must never run, wherever it came from: each image's entrypoint refuses
    one in the file its *_FILE variable names, saying which."""
    tmp_path.chmod(0o755)
    args = []
    for name in SECRET_FILES[service]:
        value = f"change-me-{name.lower()}" if name == secret else "0123456789abcdef" * 4
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o644)
        args += ["--env", f"{name}_FILE=/given/{name}"]
    if service == "app":
        args += [
            "--env",
            "DJANGO_ALLOWED_HOSTS=app",
            "--env",
            "DATABASE_URL=postgres://chat_app@nowhere:1/chat",
        ]
    result = compose_stack.docker(
        "run", "--rm", "--network", "none", "--volume", f"{tmp_path}:/given:ro", *args,
        f"chat-stack/{service}:{IMAGE_TAG}", *(["migrate"] if service == "app" else []),
        timeout=ONE_SHOT_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"{secret} is still a placeholder" in result.stdout + result.stderr


def test_the_secrets_job_refuses_a_placeholder_of_yours(compose_stack: ComposeStack, tmp_path):
    (tmp_path / "store").mkdir(parents=True)
    (tmp_path / "store" / "POSTGRES_APP_PASSWORD").write_text("change-me-please-0123456789")
    result = compose_stack.docker(
        "run", "--rm", "--network", "none", "--volume", f"{tmp_path}:/secrets",
        f"chat-stack/secrets:{IMAGE_TAG}", timeout=ONE_SHOT_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: /secrets/store/POSTGRES_APP_PASSWORD is still a placeholder: "
        "put a random value there, or delete it for a new one"
    )
    assert not (tmp_path / "app").exists()  # nothing handed over


def test_no_password_is_in_any_containers_environment(compose_stack: ComposeStack):
    """Every secret is a file: none is in what `docker inspect` shows of any container."""
    secrets = {
        name: compose_stack.secret(name)
        for name in ("POSTGRES_OWNER_PASSWORD", "POSTGRES_APP_PASSWORD", "POSTGRES_MONITOR_PASSWORD",
                     "PGBOUNCER_AUTH_PASSWORD", "PGBOUNCER_ADMIN_PASSWORD", "PGBOUNCER_STATS_PASSWORD",
                     "REDIS_PASSWORD", "DJANGO_SECRET_KEY")
    }  # fmt: skip
    assert all(len(value) >= 16 for value in secrets.values())
    ids = compose_stack.docker(
        "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}"
    ).stdout.split()
    inspected = compose_stack.docker("inspect", *ids).stdout
    for container in json.loads(inspected):
        for variable in container["Config"]["Env"] or []:
            name = variable.split("=", 1)[0]
            assert not name.endswith(("PASSWORD", "SECRET_KEY", "VERIFIER", "SHA256")), (
                f"{name} in the environment"
            )
    leaked = [name for name, value in secrets.items() if value in inspected]
    assert leaked == []


def test_every_connection_between_services_uses_tls(compose_stack: ComposeStack):
    api = ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file())
    api.request("GET", "/healthz")  # the app's pool connects
    backends = compose_stack.psql(
        "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.datname = 'chat' AND a.backend_type = 'client backend' "
        "AND a.pid <> pg_backend_pid()"  # this query's own session, over the Unix socket
    )
    assert {row["usename"] for row in backends} >= {APP_ROLE}
    assert {row["ssl"] for row in backends} == {"t"}, backends
    app_clients = [row for row in compose_stack.pgbouncer_show("CLIENTS") if row["user"] == APP_ROLE]
    assert app_clients and all(row["tls"] for row in app_clients), app_clients


def _in_app_container(compose_stack: ComposeStack, code: str) -> str:
    return compose_stack.docker("exec", compose_stack.container("app"), "python", "-c", code).stdout.strip()


def test_plaintext_is_refused_on_each_hop_the_app_uses(compose_stack: ComposeStack):
    pgbouncer = _in_app_container(
        compose_stack,
        "import psycopg\n"
        "try: psycopg.connect('host=pgbouncer port=6432 dbname=chat user=chat_app sslmode=disable "
        "password=irrelevant-here', connect_timeout=5)\n"
        "except psycopg.Error as e: print(e)",
    )
    assert "SSL required" in pgbouncer
    redis_plain = _in_app_container(
        compose_stack,
        "import redis\n"
        "try: redis.Redis(host='redis', port=6379, socket_timeout=5).ping(); print('answered')\n"
        "except redis.RedisError as e: print(type(e).__name__)",
    )
    assert redis_plain == "ConnectionError"


def test_each_role_logs_in_only_from_its_own_network(compose_stack: ComposeStack):
    """pg_hba.conf and PgBouncer's hba file name networks, not just roles: the right
    password from the wrong network is refused."""
    password = compose_stack.secret("POSTGRES_APP_PASSWORD")
    # The app role, straight to PostgreSQL from the monitor's network (which reaches it).
    refused = compose_stack.run_as_monitor(
        f"PGPASSWORD='{password}' psql --no-psqlrc -c 'select 1' "
        '"host=postgres port=5432 dbname=chat user=chat_app sslmode=verify-full '
        'sslrootcert=/run/secrets/monitor/ca.crt connect_timeout=5"',
        check=False,
    )
    assert refused.returncode != 0
    assert "pg_hba.conf rejects connection" in refused.stderr
    # The console's stats user, from the app's network, with its right password.
    stats = compose_stack.secret("PGBOUNCER_STATS_PASSWORD")
    console = _in_app_container(
        compose_stack,
        "import psycopg\n"
        f"try: psycopg.connect('host=pgbouncer port=6432 dbname=pgbouncer user=pgbouncer_stats "
        f"sslmode=verify-full sslrootcert=/run/secrets/app/ca.crt', password={stats!r}, connect_timeout=5)\n"
        "except psycopg.Error as e: print(e)",
    )
    # PgBouncer's words for "no hba rule admits you": 1.18 "login rejected", 1.24 this.
    assert "no authentication method is found" in console


# --- The browser's hop: the TLS proxy, and the doors it and the app close ---------------------


def _https_get(compose_stack: ComposeStack, path: str) -> tuple[int, dict[str, str], str]:
    """GET through the proxy, trusting the stack's CA: (status, headers, body); no redirect followed."""
    context = ssl.create_default_context(cafile=compose_stack.ca_file())
    connection = http.client.HTTPSConnection("127.0.0.1", PROXY_PORT, context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read().decode()
    finally:
        connection.close()


def _handshake(compose_stack: ComposeStack, room: str) -> int:
    """One WebSocket handshake through the proxy: 101 when it was upgraded, else the HTTP status."""
    url = compose_stack.app_url.replace("https://", "wss://") + f"/ws/rooms/{room}/?name=flood"
    try:
        websocket.create_connection(
            url, origin=compose_stack.app_url, sslopt={"ca_certs": compose_stack.ca_file()}, timeout=5
        ).close()
    except websocket.WebSocketBadStatusException as refused:
        return refused.status_code
    return 101


def test_the_page_comes_over_https_with_a_nonce_policy_and_hsts(compose_stack: ComposeStack):
    status, headers, page = _https_get(compose_stack, "/")
    assert status == 200
    policy = dict(
        directive.strip().split(" ", 1) for directive in headers["Content-Security-Policy"].split(";")
    )
    nonce = re.fullmatch(r"'nonce-([A-Za-z0-9_-]{22})'", policy["script-src"]).group(1)
    assert policy["style-src"] == f"'nonce-{nonce}'"
    # The page's one inline script and style carry it, and nothing inline goes without it.
    assert re.findall(r"<script[^>]*>", page) == [f'<script nonce="{nonce}">']
    assert re.findall(r"<style[^>]*>", page) == [f'<style nonce="{nonce}">']
    assert (policy["default-src"], policy["connect-src"]) == ("'self'", "'self'")
    assert (policy["frame-ancestors"], policy["base-uri"]) == ("'none'", "'none'")
    assert _https_get(compose_stack, "/")[1]["Content-Security-Policy"] != headers["Content-Security-Policy"]
    # HSTS for a year; includeSubDomains and preload only when the operator opts in.
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "no-store" in headers["Cache-Control"]  # a nonce is never served twice
    assert "; Secure" in headers["Set-Cookie"]
    # Every other response gets a policy that allows nothing: the API's JSON, for one.
    status, headers, _ = _https_get(compose_stack, "/api/rooms")
    assert status == 200
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")


def test_a_websocket_through_the_proxy_is_ready_and_acknowledged(compose_stack: ComposeStack):
    room = f"c-{uuid.uuid4().hex[:12]}"
    api = ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file())
    api.ensure_room(room)  # a POST over https: the CSRF cookie is Secure, the Referer checked
    socket = ChatSocket(
        compose_stack.app_url, room, "via-proxy", sslopt={"ca_certs": compose_stack.ca_file()}
    )
    try:
        assert socket.ws.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert socket.ready == {"type": "ready", "room": room, "author": "via-proxy"}
        ack = socket.post("through nginx", "proxy-1")
        assert (ack["type"], ack["client_id"]) == ("ack", "proxy-1")
    finally:
        socket.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")  # trying it is the point
def test_the_tls_port_refuses_plain_http_old_tls_and_an_untrusted_certificate(compose_stack: ComposeStack):
    # Plain HTTP to the TLS port: nginx's 400, never the page.
    with socket_module.create_connection(("127.0.0.1", PROXY_PORT), timeout=10) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := plain.recv(4096):
            answer += chunk
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.startswith(b"HTTP/1.1 400") and b"plain HTTP request was sent to HTTPS port" in answer

    def handshake(context: ssl.SSLContext) -> str:
        with (
            socket_module.create_connection(("127.0.0.1", PROXY_PORT), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            return tls.version()

    # A client that trusts only other CAs (the system's, as a browser that was not told
    # about the private CA) is refused the certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl.create_default_context())
    trusting = ssl.create_default_context(cafile=compose_stack.ca_file())
    assert handshake(trusting) == "TLSv1.3"
    trusting.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(trusting) == "TLSv1.2"
    # TLS 1.1: the server's alert, not a client that could not even try.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(compose_stack.ca_file())
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        handshake(old)


# proxy/nginx.conf: per client address, handshakes 2/s (burst 20), history 1/s (burst 10),
# other requests 5/s (burst 20). Every bucket is full again after this long.
LIMITS_REFILL_S = 11


@v2_only
def test_one_address_flooding_gets_429_while_a_page_load_does_not(compose_stack: ComposeStack):
    """All clients of this test share one address (the engine's gateway), so the per-address
    limits show as: what a page does passes, a flood from the same address gets 429."""
    room = f"c-{uuid.uuid4().hex[:12]}"
    api = ChatHttp(compose_stack.app_url, ca_file=compose_stack.ca_file())
    api.ensure_room(room)
    time.sleep(LIMITS_REFILL_S)  # whatever earlier tests spent
    # What a page load does, and an API client's history request: twice (a reload).
    for _ in range(2):
        assert _https_get(compose_stack, "/")[0] == 200
        assert _https_get(compose_stack, "/api/rooms")[0] == 200
        assert _handshake(compose_stack, room) == 101
        assert _https_get(compose_stack, f"/api/rooms/{room}/messages?limit=20")[0] == 200

    # A flood of handshakes: bounded in count, each bounded in time.
    started = time.monotonic()
    handshakes = Counter(_handshake(compose_stack, room) for _ in range(60))
    elapsed = time.monotonic() - started
    assert set(handshakes) == {101, 429}, handshakes
    assert handshakes[101] <= 20 - 2 + 2 * elapsed + 1, (handshakes, elapsed)  # burst, less the page's
    # History: the lower rate; refused in the API's error shape, saying when to come back.
    history = [_https_get(compose_stack, f"/api/rooms/{room}/messages?limit=20") for _ in range(30)]
    statuses = Counter(status for status, _, _ in history)
    assert statuses[429] >= 10 and statuses[200] <= 12, statuses
    _, headers, body = next(answer for answer in history if answer[0] == 429)
    assert json.loads(body)["code"] == "rate_limited"
    assert headers["Retry-After"] == "1"
    # The rest of the API, at its own rate.
    assert Counter(_https_get(compose_stack, "/api/rooms")[0] for _ in range(40))[429] >= 10

    # A rate, not a ban: once the buckets refill, the same address is served again (and the
    # tests after this one find them full).
    time.sleep(LIMITS_REFILL_S)
    assert _handshake(compose_stack, room) == 101
    assert _https_get(compose_stack, f"/api/rooms/{room}/messages?limit=20")[0] == 200
    time.sleep(1)


def _up_healthy(compose_stack: ComposeStack, *services: str, scale: dict[str, int] | None = None) -> None:
    """`up` some services of the loadtest profile and wait (bounded) until each container is healthy."""
    scaling = [f"--scale={service}={count}" for service, count in (scale or {}).items()]
    if compose_stack.v2:
        compose_stack.compose(
            "up", "--detach", "--wait", *scaling, *services, profiles=EVERY_PROFILE, timeout=240
        )
        return
    compose_stack.compose("up", "--detach", *scaling, *services, profiles=EVERY_PROFILE, timeout=240)
    deadline = time.monotonic() + 120
    for service in services:
        for container in compose_stack.containers(service):
            while compose_stack.container_state(container)[1] != "healthy":
                state = compose_stack.container_state(container)
                assert time.monotonic() < deadline and state[0] == "running", f"{service}: {state}"
                time.sleep(2)


def _json_from(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_locust_master_and_scaled_workers_come_up(compose_stack: ComposeStack):
    _up_healthy(compose_stack, "locust-master", "locust-worker", scale={"locust-worker": 2})
    assert len(compose_stack.containers("locust-worker")) == 2
    published = compose_stack.compose("port", "locust-master", "8089", profiles=EVERY_PROFILE).stdout.strip()
    assert published == f"127.0.0.1:{LOCUST_PORT}"
    deadline = time.monotonic() + 30
    while (
        "2 workers connected"
        not in compose_stack.docker("logs", compose_stack.container("locust-master")).stderr
    ):
        assert time.monotonic() < deadline, "the master never saw both workers"
        time.sleep(1)
    # Its web UI's Connections tab: the monitor reads the app role's server connections.
    deadline = time.monotonic() + 30
    while (tab := _json_from(f"http://127.0.0.1:{LOCUST_PORT}/connections/data"))["now"][
        "server_connections"
    ] is None:
        assert time.monotonic() < deadline, f"the Connections tab has no reading: {tab}"
        time.sleep(1)
    assert tab["bound"] == connection_bound() and 0 <= tab["now"]["server_connections"] <= tab["bound"]
    compose_stack.compose("stop", "locust-master", "locust-worker", profiles=EVERY_PROFILE, timeout=60)


# Someone other than root and the images' users: the results must become theirs.
RESULTS_OWNER = 4242


@v2_only
def test_the_loadtest_proof_exits_0_with_its_results_on_the_host(compose_stack: ComposeStack, tmp_path):
    _up_healthy(compose_stack, "app-naive")
    results = tmp_path / "results"
    results.mkdir()
    os.chown(results, RESULTS_OWNER, RESULTS_OWNER)
    on_the_host = dataclasses.replace(
        compose_stack, env={**compose_stack.env, "LOADTEST_RESULTS": str(results)}
    )
    result = on_the_host.compose(
        "run", "--rm", "-T", "--no-deps", "loadtest", profiles=EVERY_PROFILE, timeout=900, check=False
    )
    print(result.stdout[-6000:], result.stderr[-3000:], sep="\n")
    assert result.returncode == 0, f"loadtest exited {result.returncode}:\n{result.stdout[-3000:]}"
    assert f"Report: {results}/report.md   Plot: {results}/connections.png" in result.stdout
    written = [path for path in results.rglob("*")]
    assert {"report.md", "connections.png"} <= {path.name for path in written}
    assert {(path.stat().st_uid, path.stat().st_gid) for path in written} == {(RESULTS_OWNER, RESULTS_OWNER)}
