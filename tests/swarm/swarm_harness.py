"""Driving the three-node swarm of `make swarm-test` from the test process.

swarm/swarm.sh run starts the engine, the Docker-in-Docker nodes and the swarm, exports
SWARM_STATE and DOCKER_HOST to this process, and removes it all afterwards. Here a
topology is deployed (swarm.sh deploy) and the nodes are asked what they run through
their own docker CLI (`docker exec NODE docker ...`), as an operator on a node would.

Three kinds of clients, each where it belongs:
- chatters (loadtest/faults.py's ledger) in this process, through each node's proxy
  (https://NODE:8443, host-mode ports), a new node at every (re)connect as a browser
  behind round-robin DNS would: every message they write is looked up in PostgreSQL;
- Locust workers on the nodes (the stack's locust-worker service) and their master in a
  one-shot container on node1, on the stack's attachable networks, as Compose's
  `loadtest` service runs: the load, the connection monitor and the summary;
- a container on node1's monitoring network for PgBouncer's consoles (PoolSampler), and
  psql in PostgreSQL's own container.
"""

import csv
import io
import itertools
import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from command import run

from loadtest.faults import Chatter, Ledger, ledger_outcome, message_acknowledged
from probes.chat import ChatHttp
from swarm.budget import Budget, budget

PROJECT = Path(__file__).resolve().parents[2]
SWARM_SH = PROJECT / "swarm" / "swarm.sh"
STACK = "chat"
PROXY_PORT = 8443
METRICS_PORT = 9100  # the app's metrics (APP_METRICS_PORT): per task, never proxied
DEPLOY_TIMEOUT_S = 420
RECOVERY_LIMIT_S = 60.0  # from a fault's end until every node's proxy acknowledges a message again
CHATTERS_WRITING_WITHIN_S = 30.0  # from their start until each chatter's first ack


@dataclass(frozen=True)
class Node:
    name: str  # its host name in the swarm: node1, node2, node3
    container: str  # its container on the private engine
    address: str  # on the nodes' network, which this host reaches


class Task(NamedTuple):
    id: str
    node: str


class Swarm:
    """The nodes swarm/swarm.sh made (SWARM_STATE), and the stack deployed on them."""

    def __init__(self, state: Path, topology: str):
        self.state, self.topology = state, topology
        self.nodes = [Node(*line.split()) for line in (state / "nodes").read_text().splitlines()]
        self.compose = json.loads((state / "compose.json").read_text())
        self.budget: Budget = budget(topology, len(self.nodes))
        self.results = state / "results" / topology
        self.results.mkdir(parents=True, exist_ok=True)

    # --- the engines ----------------------------------------------------------------------

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def docker(self, node: str, *args, timeout: float = 60, check: bool = True, input: str | None = None):
        """The docker CLI of one node's engine."""
        interactive = ["--interactive"] if input is not None else []
        argv = ["docker", "exec", *interactive, self.node(node).container, "docker", *args]
        return run(argv, timeout=timeout, check=check, input=input)

    def manager(self, *args, **options):
        return self.docker("node1", *args, **options)

    def swarm_sh(self, *args, timeout: float = DEPLOY_TIMEOUT_S):
        return run([SWARM_SH, *args], timeout=timeout)

    # --- what runs where --------------------------------------------------------------------

    def tasks_running(self, service: str, *, stopping_too: bool = False) -> list[Task]:
        """The service's tasks whose container runs now; ``stopping_too`` counts those told
        to stop whose container has not stopped yet (an update's old task)."""
        wanted = [] if stopping_too else ["--filter", "desired-state=running"]
        out = self.manager(
            "service", "ps", *wanted, "--format", "{{.ID}} {{.Node}} {{.CurrentState}}", f"{STACK}_{service}"
        ).stdout
        return [Task(*line.split()[:2]) for line in out.splitlines() if line.split()[2:3] == ["Running"]]

    def nodes_running(self, service: str) -> list[str]:
        """The nodes of the service's running tasks, one entry per task."""
        return sorted(task.node for task in self.tasks_running(service))

    def container(self, service: str, node: str) -> str:
        """The id of the service's running container on that node."""
        ids = self.docker(
            node, "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={STACK}_{service}"
        ).stdout.split()
        assert ids, f"no running {service} container on {node}"
        return ids[0]

    def pgbouncer_services(self) -> list[str]:
        return [f"pgbouncer-{n.name}" for n in self.nodes] if self.topology == "per-node" else ["pgbouncer"]

    def force_update(self, service: str, *options: str, timeout: float = DEPLOY_TIMEOUT_S) -> None:
        """Every task of the service replaced, under its update_config but for ``options``;
        returns once that is done."""
        self.manager(
            "service", "update", "--detach=false", "--force", *options, f"{STACK}_{service}", timeout=timeout
        )

    def wait_converged(self) -> float:
        """Seconds until every service runs what it wants again (swarm.sh's rule)."""
        started = time.monotonic()
        self.swarm_sh("wait")
        return round(time.monotonic() - started, 1)

    # --- asking the servers -------------------------------------------------------------------

    def psql(self, sql: str, **params: str) -> list[dict]:
        """A query as PostgreSQL's superuser over its Unix socket (peer), in its container.
        Parameters are psql variables (:'name' in the SQL), quoted by psql itself."""
        variables = [f"--set={name}={value}" for name, value in params.items()]
        out = self.manager(
            "exec", "--interactive", self.container("postgres", "node1"), "psql", "--no-psqlrc", "--quiet",
            "--csv", "--host=/run/postgresql", "--dbname=chat", "--set=ON_ERROR_STOP=1", *variables,
            "--file=-",
            input=sql.rstrip().rstrip(";") + ";\n",
        ).stdout  # fmt: skip
        return list(csv.DictReader(io.StringIO(out)))

    def stored(self, client_ids: list[str]) -> list[tuple[str, int]]:
        """(client_id, id) of the stored messages among these client_ids."""
        rows = self.psql(
            "SELECT client_id, id FROM chat_message WHERE client_id = ANY(string_to_array(:'ids', ','))",
            ids=",".join(client_ids),
        )
        return [(row["client_id"], int(row["id"])) for row in rows]

    def app_errors_by_node(self) -> dict[str, Counter]:
        """chat_errors_total by code, per node, added up over its app tasks' metrics."""
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics').read().decode())"
        errors: dict[str, Counter] = {}
        for node in set(self.nodes_running("app")):
            counts = errors.setdefault(node, Counter())
            for container in self.docker(
                node, "ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={STACK}_app"
            ).stdout.split():
                text = self.docker(node, "exec", container, "python", "-c", fetch).stdout
                for code, value in re.findall(
                    r'^chat_errors_total\{code="([a-z_]+)"\} ([0-9.e+]+)$', text, re.M
                ):
                    counts[code] += int(float(value))
        return errors

    # --- clients ----------------------------------------------------------------------------

    def proxy_urls(self, but: str | None = None) -> list[str]:
        """Each node's proxy (but that node's)."""
        return [f"https://{n.address}:{PROXY_PORT}" for n in self.nodes if n.name != but]

    def record(self, figures: dict) -> None:
        """A line of figures for the README (results/swarm-test/TOPOLOGY/figures.jsonl)."""
        with (self.results / "figures.jsonl").open("a") as out:
            out.write(json.dumps({"topology": self.topology, "nodes": len(self.nodes), **figures}) + "\n")

    def ca_file(self) -> str:
        return str(self.state / "secrets" / "store" / "ca.crt")

    def sslopt(self) -> dict:
        """websocket-client's TLS options for the nodes' proxies."""
        return {"ca_certs": self.ca_file()}

    def start_load(self, name: str, users: int, hold_s: float) -> "LoadRun":
        return LoadRun(self, name, users, hold_s)


class PoolSampler:
    """Every PgBouncer's SHOW POOLS row for the app's pool, about once a second while the block
    runs: one long-lived container on node1's monitoring network asking each console in turn
    (a container per sample would cost more CPU than the load on a 2-core machine)."""

    def __init__(self, swarm: Swarm):
        self.swarm = swarm
        self.samples: list[dict] = []

    def __enter__(self) -> "PoolSampler":
        services = " ".join(self.swarm.pgbouncer_services())
        script = (
            'export PGPASSWORD="$(cat /run/secrets/monitor/PGBOUNCER_STATS_PASSWORD)"; '
            "while :; do for service in " + services + "; do "
            'echo "#sample $service $(date +%s.%N)"; '
            'psql --no-psqlrc --csv "host=$service port=6432 dbname=pgbouncer user=pgbouncer_stats '
            'sslmode=verify-full sslrootcert=/run/secrets/monitor/ca.crt connect_timeout=2" '
            '--command="SHOW POOLS" || true; done; sleep 1; done'
        )
        self.name = f"pool-sampler-{uuid.uuid4().hex[:6]}"
        # A file, not a pipe: nobody reads until the end, and a full pipe would stall it.
        self.log = self.swarm.results / f"{self.name}.txt"
        argv = [
            "docker", "exec", self.swarm.node("node1").container,
            "docker", "run", "--rm", "--name", self.name, "--network", f"{STACK}_monitoring",
            "--user", "0:0", "--cap-drop", "ALL",
            "--volume", f"{self.swarm.state}/secrets/monitor:/run/secrets/monitor:ro", "--entrypoint", "sh",
            self.swarm.compose["services"]["pgbouncer"]["image"], "-c", script,
        ]  # fmt: skip
        with self.log.open("w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *_exc) -> None:
        self.swarm.manager("rm", "--force", self.name, check=False)
        self.process.wait(timeout=30)
        for block in self.log.read_text().split("#sample ")[1:]:
            header, _, table = block.partition("\n")
            service, at = header.split()
            for row in csv.DictReader(io.StringIO(table)):
                if (row.get("database"), row.get("user")) == ("chat", "chat_app"):
                    self.samples.append({"service": service, "time": float(at), **row})

    def server_peaks(self) -> dict[str, int]:
        """Per PgBouncer, the most server connections its app pool held (active + idle + used)."""
        peaks: dict[str, int] = {}
        for sample in self.samples:
            held = sum(int(sample[column]) for column in ("sv_active", "sv_idle", "sv_used"))
            peaks[sample["service"]] = max(peaks.get(sample["service"], 0), held)
        return peaks

    def waiting_clients(self, service: str) -> int:
        """The most clients that waited for a server connection at that PgBouncer."""
        return max((int(s["cl_waiting"]) for s in self.samples if s["service"] == service), default=0)


class NodeChatter(Chatter):
    """A chatter who (re)connects through the next node's proxy each time."""

    def __init__(self, urls: list[str], sslopt: dict, *args, **kwargs):
        super().__init__(urls[0], *args, socket_options={"sslopt": sslopt}, **kwargs)
        self.urls = itertools.cycle(urls)

    def _connect(self):
        self.base_url = next(self.urls)
        return super()._connect()


class Chatters:
    """Chat clients writing while a fault happens; ``outcome()`` accounts for every message."""

    def __init__(self, swarm: Swarm, clients: int = 12, pace: float = 0.5):
        self.swarm, self.ledger, self.stop = swarm, Ledger(), threading.Event()
        http = ChatHttp(swarm.proxy_urls()[0], ca_file=swarm.ca_file())
        self.room = f"swarm-{uuid.uuid4().hex[:8]}"
        http.ensure_room(self.room)
        self.threads = [
            NodeChatter(swarm.proxy_urls()[n:] + swarm.proxy_urls()[:n], swarm.sslopt(), self.room,
                        f"chatter{n}", self.ledger, self.stop, pace)
            for n in range(clients)
        ]  # fmt: skip

    def __enter__(self) -> "Chatters":
        """Returns once every chatter has had a message acknowledged: all of them are writing."""
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + CHATTERS_WRITING_WITHIN_S
        for thread in self.threads:
            if not thread.acknowledged.wait(max(0.0, deadline - time.monotonic())):
                self.__exit__()
                raise AssertionError(
                    f"{thread.name} had no message acknowledged within {CHATTERS_WRITING_WITHIN_S:g}s"
                )
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()  # nothing new; what each holds is delivered (faults.DELIVERY_LIMIT_S)
        for thread in self.threads:
            thread.join(timeout=60)

    def outcome(self) -> dict:
        """faults.ledger_outcome's counts, and any chatter still running after its deadline."""
        rows = self.swarm.stored(list(self.ledger.sent))
        stragglers = [thread.name for thread in self.threads if thread.is_alive()]
        return {**ledger_outcome(self.ledger, rows), "stragglers": stragglers}


def recovery_seconds(swarm: Swarm, room: str, since: float, urls: list[str]) -> float:
    """From ``since`` until a new client's message is acknowledged through each of ``urls``."""
    deadline = since + RECOVERY_LIMIT_S
    pending = set(urls)
    while pending and time.monotonic() < deadline:
        pending = {url for url in pending if not message_acknowledged(url, room, sslopt=swarm.sslopt())}
        time.sleep(0.5)
    return round(time.monotonic() - since, 1) if not pending else float("inf")


# prove's progress line once the ramp is over: "  NAME   11s load  users 150/150  ...".
FULL_LOAD = re.compile(r"^\s+\S+\s+\d+s load\s+users (\d+)/\1\b", re.M)


class LoadRun:
    """`python -m loadtest.prove` as Locust's master in a one-shot container on node1, with a
    worker on every app node; its arguments, capabilities and monitor settings are those of
    docker-compose.yml's `loadtest` service (read from compose.json), the target is the app
    through Swarm's DNS (every replica), the results land in Swarm.results/NAME."""

    def __init__(self, swarm: Swarm, name: str, users: int, hold_s: float):
        self.swarm, self.results = swarm, swarm.results / name
        self.results.mkdir(parents=True)
        service = swarm.compose["services"]["loadtest"]
        environment = dict(service["environment"])
        if swarm.topology == "per-node":
            # The monitor reads one PgBouncer's console, and would take the other PgBouncers'
            # server connections for the app's own, straight to PostgreSQL (and refuse to
            # start). Per node, PoolSampler reads every console; PostgreSQL's count, the
            # sum the gate holds, comes from the monitor either way.
            del environment["MONITOR_PGBOUNCER_DSN"], environment["MONITOR_PGBOUNCER_PASSWORD_FILE"]
        # Fresh workers for every master. A master sends its workers `quit` as it exits, and
        # only node1's (its own engine's) act on it: the others keep their connection to an
        # address that no longer answers, and reconnect only once Locust's 60 s master
        # heartbeat timeout has ended them. Restarted first, they find the next master at once.
        swarm.force_update("locust-worker", "--update-parallelism=0")
        workers = len(swarm.nodes_running("locust-worker"))
        argv = [
            "docker", "exec", swarm.node("node1").container, "docker", "run", "--rm",
            "--name", f"locust-master-{name}",
            # Workers find their master by this name (their --master-host).
            "--network", f"name={STACK}_web,alias=locust-master", "--network", f"{STACK}_monitoring",
            "--user", service["user"], "--read-only", "--cap-drop", "ALL",
            *(option for cap in service["cap_add"] for option in ("--cap-add", cap)),
            *(option for path in service["tmpfs"] for option in ("--tmpfs", path)),
            "--ulimit", "nofile={soft}:{hard}".format(**service["ulimits"]["nofile"]),
            "--volume", f"{swarm.state}/secrets:/run/secrets-source:ro",
            "--volume", f"{self.results}:/results",
            *(option for item in environment.items() for option in ("--env", "=".join(item))),
            "--entrypoint", service["entrypoint"][0], service["image"],
            "python", "-m", "loadtest.prove", "--target", f"{name}=http://app:8000",
            "--users", str(users), "--duration", f"{hold_s:g}", "--results", "/results",
            "--expect-workers", str(workers),
        ]  # fmt: skip
        # A file, not a pipe: read at the end, and a full pipe would stall Locust meanwhile.
        self.log = self.results / "master.txt"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.timeout = users / 25 + hold_s + 300  # ramp at Locust's spawn rate, the run, slack

    def wait_until_at_full_load(self) -> None:
        """Returns once every user runs (the master's progress line says `load`, so every worker
        is there): a fault before that would meet a half-started run, or a master still
        waiting for a worker the fault takes away."""
        deadline = time.monotonic() + self.timeout
        while not FULL_LOAD.search(self.log.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text()[-4000:]
                raise AssertionError(f"the load run {self.results.name} never reached full load:\n{tail}")
            time.sleep(0.5)

    def summary(self) -> dict:
        """Waits for the run; its summary.json. prove's own exit status is not the verdict
        here: its bound is one PgBouncer's pool, and the per-node topology has several."""
        self.process.wait(timeout=self.timeout)
        path = self.results / self.results.name / "summary.json"
        tail = self.log.read_text()[-4000:]
        assert path.exists(), f"the load run wrote no summary (exit {self.process.returncode}):\n{tail}"
        return json.loads(path.read_text())


def unexpected_load_errors(summary: dict, expected: tuple[str, ...] = ()) -> list[dict]:
    """Locust's errors but those whose text names an expected outcome (e.g. "code 1001")."""
    return [error for error in summary["errors"] if not any(word in error["error"] for word in expected)]
