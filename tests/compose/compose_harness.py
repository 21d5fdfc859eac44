"""Driving the Compose stack on a real Docker engine: the commands the fixtures and tests share.

compose/engine.sh provides the engine (a private dockerd where none answers, stopped
by its PID afterwards, the host's network state put back) and the Debian base image
(debootstrap, cached). The stack runs under its own project name, with its own
subnets and secrets volume, so a developer's `docker compose up` (and its .env) is
never touched.

Runs in CI (CI=true) and with `make compose-test` (COMPOSE_TEST=1); elsewhere the
tests are skipped, because a first run installs Debian packages and builds images
(about 3-5 minutes).
"""

import csv
import io
import os
import re
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from command import run

from probes.chat import ChatHttp, ChatSocket

PROJECT = Path(__file__).resolve().parents[2]
ENGINE = PROJECT / "compose" / "engine.sh"
COMPOSE_FILE = PROJECT / "docker-compose.yml"
OFFSET = int(os.environ.get("TEST_STACK_OFFSET", "0"))
# Outside the ephemeral port range (32768-60999), where a bind can collide with
# the source port of any outgoing connection. The TLS proxy's: the stack publishes no other.
PROXY_PORT = 29000 + OFFSET
LOCUST_PORT = 29100 + OFFSET
PROMETHEUS_PORT = 29200 + OFFSET
PROJECT_NAME = f"chattest{OFFSET or ''}"
# Serialises sessions on one machine: they would share the engine and its docker0.
LOCK_FILE = Path("/run/lock/chat-compose-test.lock")
LOCK_WAIT_S = 1200
LONG_RUNNING = ("postgres", "pgbouncer", "redis", "app", "proxy")
# What the proxy tells Daphne, for a test that talks to Daphne itself (direct_url).
DIRECT_HEADERS = {"Host": "app:8000", "X-Forwarded-Proto": "https"}
SUBNETS = ("POOLER", "DATABASE", "MIGRATIONS", "MONITORING")  # docker-compose.yml's SUBNET_*
IMAGE_TAG = "local"
# docker-compose.yml's profiles: build, logs and `down` take them all.
EVERY_PROFILE = ("loadtest", "monitoring")
# What the test keeps for a reader: Compose v2's `up --wait` output (README, "Docker Compose").
RESULTS = PROJECT / "results" / "compose-test"
BUILD_TIMEOUT_S = 1200
UP_TIMEOUT_S = 240
TIMINGS: dict[str, float] = {}


@dataclass
class ComposeStack:
    """One Compose project on one engine, driven through whichever Compose is installed."""

    command: list[str]  # ["docker", "compose"] (v2) or ["docker-compose"] (1.x)
    version: str
    env: dict[str, str]  # the subprocess environment: DOCKER_HOST and little else
    env_file: Path

    @property
    def v2(self) -> bool:
        return not self.version.startswith("1.")

    @property
    def app_url(self) -> str:
        """The stack as a browser reaches it: through the TLS proxy (trust ca_file())."""
        return f"https://127.0.0.1:{PROXY_PORT}"

    @property
    def direct_url(self) -> str:
        """Daphne itself, past the proxy and its rate limits, for tests that load the app: its
        address on the internal `web` network, which the engine's host reaches. Requests must
        carry DIRECT_HEADERS, or DJANGO_HTTPS redirects them to https."""
        return f"http://{self.ip_address('app', 'web')}:8000"

    def ca_file(self) -> str:
        """The `secrets` job's CA, which issued the proxy's certificate, as a file (read once)."""
        path = self.env_file.with_name("ca.crt")
        if not path.exists():
            path.write_text(self.secret("ca.crt"))
        return str(path)

    def compose(self, *args, timeout: float = 120, check: bool = True, profiles: tuple[str, ...] = ()):
        argv = [
            *self.command,
            "--project-name",
            PROJECT_NAME,
            "--project-directory",
            PROJECT,
            "--file",
            COMPOSE_FILE,
            "--env-file",
            self.env_file,
            *(option for profile in profiles for option in ("--profile", profile)),
            *args,
        ]
        return run(argv, timeout=timeout, env=self.env, check=check)

    def docker(self, *args, timeout: float = 60, check: bool = True, input: str | None = None):
        return run(["docker", *args], timeout=timeout, env=self.env, check=check, input=input)

    def containers(self, service: str) -> list[str]:
        """Ids of the service's containers, running or exited."""
        return self.docker(
            "ps",
            "--all",
            "--quiet",
            "--filter",
            f"label=com.docker.compose.project={PROJECT_NAME}",
            "--filter",
            f"label=com.docker.compose.service={service}",
        ).stdout.split()

    def container(self, service: str) -> str:
        """The id of the service's (first) container."""
        ids = self.containers(service)
        assert ids, f"no container for service {service}"
        return ids[0]

    def container_state(self, container: str) -> tuple[str, str, int]:
        """(status, health, exit code) of a container; health is "none" without a healthcheck."""
        out = self.docker(
            "inspect",
            "--format",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} "
            "{{.State.ExitCode}}",
            container,
        ).stdout.split()
        return out[0], out[1], int(out[2])

    def state(self, service: str) -> tuple[str, str, int]:
        return self.container_state(self.container(service))

    def psql(self, sql: str, **params: str) -> list[dict]:
        """A query in PostgreSQL's container, as its superuser over the Unix socket (peer auth).

        Parameters are psql variables (:'name' in the SQL), quoted by psql itself; the
        SQL goes on stdin because psql interpolates variables there, not in --command.
        """
        variables = [f"--set={name}={value}" for name, value in params.items()]
        out = self.docker(
            "exec",
            "--interactive",
            self.container("postgres"),
            "psql",
            "--no-psqlrc",
            "--quiet",
            "--csv",
            "--host=/run/postgresql",
            "--dbname=chat",
            "--set=ON_ERROR_STOP=1",
            *variables,
            "--file=-",
            input=sql.rstrip().rstrip(";") + ";\n",
        ).stdout
        return list(csv.DictReader(io.StringIO(out)))

    def pgbouncer_show(self, what: str) -> list[dict]:
        """SHOW on PgBouncer's console as pgbouncer_stats, from where the console may be
        reached at all: a container on the monitoring network, with the monitor's secrets."""
        assert re.fullmatch(r"[A-Z]+", what)
        out = self.run_as_monitor(
            'PGPASSWORD="$(cat /run/secrets/monitor/PGBOUNCER_STATS_PASSWORD)" exec psql --no-psqlrc --csv '
            '"host=pgbouncer port=6432 dbname=pgbouncer user=pgbouncer_stats sslmode=verify-full '
            f'sslrootcert=/run/secrets/monitor/ca.crt" --command="SHOW {what}"'
        ).stdout
        return list(csv.DictReader(io.StringIO(out)))

    def run_as_monitor(self, script: str, check: bool = True):
        """A shell script in a throwaway container on the monitoring network, as the monitor's
        user with its secrets mounted (psql, from the PgBouncer image)."""
        return self.docker(
            "run", "--rm", "--network", f"{PROJECT_NAME}_monitoring", "--user", "10003:10003",
            "--volume", f"{PROJECT_NAME}_secrets:/run/secrets:ro", "--entrypoint", "sh",
            f"chat-stack/pgbouncer:{IMAGE_TAG}", "-c", script,
            timeout=60, check=check,
        )  # fmt: skip

    def secret(self, name: str) -> str:
        """An original from the secrets volume's store (read as root, in a throwaway container)."""
        return self.docker(
            "run", "--rm", "--network", "none", "--user", "0:0", "--volume", f"{PROJECT_NAME}_secrets:/s:ro",
            "--entrypoint", "cat", f"chat-stack/secrets:{IMAGE_TAG}", f"/s/store/{name}",
        ).stdout  # fmt: skip

    def ip_address(self, service: str, network: str) -> str:
        return self.docker(
            "inspect",
            "--format",
            f'{{{{(index .NetworkSettings.Networks "{PROJECT_NAME}_{network}").IPAddress}}}}',
            self.container(service),
        ).stdout.strip()

    def print_diagnostics(self, out) -> None:
        """What a failed bring-up needs: every container's state and the end of its log."""
        for args in (("ps", "--all"), ("logs", "--no-color", "--tail", "80")):
            result = self.compose(*args, profiles=EVERY_PROFILE, check=False, timeout=60)
            print(
                f"===== {' '.join(self.command)} {' '.join(args)}",
                result.stdout,
                result.stderr,
                sep="\n",
                file=out,
            )

    def logs_since(self, since: str, lines: int = 80) -> str:
        """What every container of the project logged since ``since`` (an RFC 3339 time)."""
        ids = self.docker(
            "ps", "--all", "--quiet", "--filter", f"label=com.docker.compose.project={PROJECT_NAME}"
        ).stdout.split()
        sections = []
        for container in ids:
            name = self.docker("inspect", "--format", "{{.Name}}", container, check=False).stdout.strip("/\n")
            result = self.docker(
                "logs", "--since", since, "--tail", str(lines), "--timestamps", container, check=False
            )
            text = (result.stdout + result.stderr).strip()
            if text:
                sections.append(f"--- {name} (during the test, at most its last {lines} lines)\n{text}")
        return "\n".join(sections) or "(no container logged anything during the test)"


# The Compose implementations the stack is tested with: Compose v2 (`docker compose`,
# the README's commands; Debian 13's package, fetched by `engine.sh compose-v2`) and
# Compose 1.29 (`docker-compose`, Debian 12's package).
COMPOSE_VERSIONS = {"v2": ["docker", "compose"], "1.29": ["docker-compose"]}


def compose_command(variant: str, env: dict[str, str]) -> tuple[list[str], str, dict[str, str]]:
    """(command, version, environment) of one Compose implementation; skips when it is missing."""
    import pytest

    command = COMPOSE_VERSIONS[variant]
    if variant == "v2":
        docker_config = run([ENGINE, "compose-v2"], timeout=300, env=env).stdout.strip()
        env = {**env, "DOCKER_CONFIG": docker_config}
    if shutil.which(command[0]) is None:
        pytest.skip(f"{' '.join(command)} is not installed")
    result = run([*command, "version", "--short"], timeout=30, env=env, check=False)
    version = result.stdout.strip().lstrip("v")
    if result.returncode or version.startswith("1.") != (variant == "1.29"):
        pytest.skip(f"{' '.join(command)} is not Compose {variant} here: {result.stdout}{result.stderr}")
    return command, version, env


def write_env_file(path: Path) -> None:
    """.env.example's knobs for the test project: its own ports, subnets and a short proof.
    No secret: the stack's `secrets` job makes them, in the project's own volume."""
    subnet = 232 + OFFSET % 20  # away from the defaults (10.231.x), so a stack of yours may run too
    lines = [
        f"COMPOSE_PROJECT_NAME={PROJECT_NAME}",
        f"PROXY_PUBLISH=127.0.0.1:{PROXY_PORT}",
        f"LOCUST_PUBLISH=127.0.0.1:{LOCUST_PORT}",
        f"PROMETHEUS_PUBLISH=127.0.0.1:{PROMETHEUS_PORT}",
        *(f"SUBNET_{name}=10.{subnet}.{n}.0/26" for n, name in enumerate(SUBNETS, 1)),
        # A short, bounded proof run: enough to show the naive target leaking.
        f"LOADTEST_USERS={os.environ.get('COMPOSE_TEST_LOADTEST_USERS', '50')}",
        f"LOADTEST_DURATION={os.environ.get('COMPOSE_TEST_LOADTEST_DURATION', '20')}",
    ]
    path.write_text("\n".join(lines) + "\n")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until_healthy(stack: ComposeStack, timeout: float) -> None:
    """Compose 1.x has no `up --wait`: poll every long-running service's health."""
    deadline = time.monotonic() + timeout
    while True:
        states = {service: stack.state(service) for service in LONG_RUNNING}
        if all(health == "healthy" for _status, health, _code in states.values()):
            return
        broken = {s: st for s, st in states.items() if st[0] in ("exited", "dead") or st[1] == "unhealthy"}
        if broken or time.monotonic() > deadline:
            raise AssertionError(f"services not healthy after {timeout:g}s: {states}")
        time.sleep(2)


# Each poster stays well under the server's per-socket limit (CHAT_RATE_PER_S, 20/s,
# burst 40, at its default in the Compose stack): this test measures connections, and a
# poster the limiter refused would measure the limiter.
POSTER_RATE_PER_S = 10


class Load(NamedTuple):
    reads: int  # HTTP reads answered 200
    posts: int  # WebSocket messages acknowledged


def drive_load(base_url: str, room: str, seconds: float, posters: int = 8) -> Load:
    """Concurrent HTTP reads and paced WebSocket posts for a few seconds; returns what was done.
    Straight to Daphne (base_url: ComposeStack.direct_url), past the proxy's rate limits.

    Every worker stops by the deadline; an error in any of them is raised here, as it was.
    """
    deadline = time.monotonic() + seconds

    def reader() -> int:
        api, done = ChatHttp(base_url), 0
        while time.monotonic() < deadline:
            result = api.request("GET", f"/api/rooms/{room}/messages?limit=20", headers=DIRECT_HEADERS)
            assert result.status == 200, result
            done += 1
        return done

    def poster(worker: int) -> int:
        host = DIRECT_HEADERS["Host"]  # Origin and Host: a name in DJANGO_ALLOWED_HOSTS
        socket, done = ChatSocket(base_url, room, f"load-{worker}", origin=f"http://{host}", host=host), 0
        try:
            while (now := time.monotonic()) < deadline:
                reply = socket.post(f"load {worker}/{done}", f"l{worker}-{done}-{uuid.uuid4().hex[:6]}")
                assert reply["type"] == "ack", reply
                done += 1
                time.sleep(max(0.0, now + 1 / POSTER_RATE_PER_S - time.monotonic()))
        finally:
            socket.close()
        return done

    with ThreadPoolExecutor(max_workers=16 + posters) as pool:
        reads = [pool.submit(reader) for _ in range(16)]
        posts = [pool.submit(poster, worker) for worker in range(posters)]
        return Load(
            reads=sum(future.result(timeout=seconds + 30) for future in reads),
            posts=sum(future.result(timeout=seconds + 30) for future in posts),
        )
