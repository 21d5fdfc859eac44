"""python -m swarm.stack: the Docker Swarm stack file, made from docker-compose.yml.

    docker compose --file docker-compose.yml --profile loadtest config --format json >compose.json
    python -m swarm.stack generate --compose-json compose.json --topology per-node \\
        --app-nodes node1,node2,node3 --secrets-dir DIR [--load-workers] >stack.json
    docker stack deploy --resolve-image never --compose-file stack.json chat

Generated, not an overlay file (`docker stack deploy -c docker-compose.yml -c overlay.yml`):
- `docker stack deploy` reads Compose files with the docker CLI's own loader (the v3
  schema), which refuses docker-compose.yml outright: its depends_on conditions are
  Compose-only ("services.app.depends_on must be a list");
- an overlay can add keys but never remove one, and Swarm needs keys replaced: the
  `secrets` volume by Swarm secrets, `tmpfs:` and `shm_size` (both ignored by Swarm) by
  tmpfs mounts; and the `secrets` job, the naive comparison app and the one-shot load
  test have no place in a swarm;
- the per-node PgBouncer topology is one service per app node: it depends on the nodes.
So docker-compose.yml stays the one place where images, commands, environment, health
checks, stop periods, ulimits and networks are written. This module reads it as Compose
itself resolves it (`docker compose config`: anchors, merges and ${VARS} mean what they
mean to Compose), maps it, and adds only what a swarm has and Compose has not:
placement, update policy, Swarm secrets and configs. The config files are the
repository's own (CONFIG_FILES), and the budget of PostgreSQL's connections is checked
before anything is written (swarm/budget.py).

Output is JSON, which is YAML: the docker CLI reads it as a Compose file.
"""

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

from swarm.budget import TOPOLOGIES, check

PROJECT = Path(__file__).resolve().parent.parent

# The services a swarm runs, from docker-compose.yml. Left out: `secrets` (the harness
# makes them once and hands them to Swarm as secrets), `app-naive` and `loadtest` (the
# Compose proof's comparison and its one-shot run), locust-master (the tests run the
# master themselves, on an attachable network, and read its results), and the
# monitoring profile (Prometheus would need DNS service discovery of every app task:
# not yet).
SERVICES = ("postgres", "redis", "migrate", "pgbouncer", "app", "proxy")
LOAD_WORKER = "locust-worker"

# Configuration files each service reads, as the repository has them: Swarm configs
# made from these very files, mounted where the image keeps its copy (/opt/chat/<path>,
# the Dockerfiles' COPY). A changed file is a new config (its name carries a digest), so
# `docker stack deploy` rolls it out through update_config without rebuilding an image.
CONFIG_FILES = {
    "postgres": ("postgres/postgresql.conf", "postgres/pg_hba.conf"),
    "pgbouncer": ("pgbouncer/pgbouncer.ini", "pgbouncer/pgbouncer_hba.conf"),
    "redis": ("redis/redis.conf", "redis/chat.acl"),
    "proxy": ("proxy/nginx.conf",),
    # The pool panel reads the bound it shows from PgBouncer's file.
    "app": ("app/supervisord.conf", "pgbouncer/pgbouncer.ini"),
}
CONFIG_ROOT = "/opt/chat"

# Every secret a service reads is named by a path in its environment or health check,
# /run/secrets/<consumer>/<file>, as in Compose's secrets volume.
SECRET_PATH = re.compile(r"/run/secrets/([a-z]+)/([A-Za-z0-9_.]+)")

# Node labels (swarm/swarm.sh sets them):
#   chat.database=true  PostgreSQL and Redis with their volumes, and the central PgBouncer
#   chat.app=true       app nodes: app replicas, a proxy each, a PgBouncer each (per-node
#                       topology), a Locust worker each
DATABASE_NODE = "node.labels.chat.database == true"
APP_NODE = "node.labels.chat.app == true"

# A restarted task waits a little, so a crash loop does not spin.
RESTART_ALWAYS = {"condition": "any", "delay": "2s"}

# One task at a time, the old one stopped before its successor starts: two PostgreSQL
# servers must never share a data directory, Redis is the one channel layer, and a
# second PgBouncer beside the first would open a second pool that the budget does not
# count. The gap is what clients see of a restart: the tests measure it.
STOP_FIRST = {"parallelism": 1, "order": "stop-first", "failure_action": "rollback", "monitor": "30s"}

# The app's rolling deploy. One replica at a time, stopped first: its Daphne processes
# stop listening, answer what they received, close every WebSocket with 1001 and exit
# (app/chat_site/graceful_daphne.py: at most APP_DRAIN_SECONDS 10 s, plus 3.5 s to cancel
# what is left, plus a statement on a database thread; supervisord's stopwaitsecs 20 s,
# stop_grace_period 25 s from docker-compose.yml). Swarm takes the task out of the
# service's DNS records 2 s before it sends SIGTERM, so reconnecting clients find the
# other replicas. Stop-first keeps one replica per app node (the scheduler puts the new
# task on the node with the fewest, the one just emptied) and never runs more app
# processes than the pools were sized for; start-first would keep full capacity during
# the step but could leave two replicas on one node and none on another.
# delay: the next replica drains only after the last one's clients have reconnected
# (their backoff) and the new task has been healthy for a while. monitor: a new task
# that fails within 30 s fails the update, which then rolls back to the previous spec.
APP_UPDATE = {
    "parallelism": 1,
    "delay": "10s",
    "order": "stop-first",
    "failure_action": "rollback",
    "monitor": "30s",
    "max_failure_ratio": 0,
}
# Rolling back goes the same way; a rollback that fails cannot roll back in turn: it
# pauses, for an operator.
APP_ROLLBACK = {**APP_UPDATE, "failure_action": "pause"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm.stack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    names = commands.add_parser("pgbouncer-names", help="the PgBouncer services' names (TLS_HOSTS_PGBOUNCER)")
    generate = commands.add_parser("generate", help="the stack file, on stdout")
    for command in (names, generate):
        command.add_argument("--topology", choices=TOPOLOGIES, required=True)
        command.add_argument("--app-nodes", required=True, help="comma-separated node host names")
    generate.add_argument(
        "--compose-json", type=Path, required=True, help="`docker compose config --format json`"
    )
    generate.add_argument("--secrets-dir", type=Path, required=True, help="secrets/generate.py's SECRETS_DIR")
    generate.add_argument("--load-workers", action="store_true", help="a Locust worker on every app node")
    args = parser.parse_args(argv)
    nodes = [node.strip() for node in args.app_nodes.split(",") if node.strip()]
    if args.command == "pgbouncer-names":
        print(",".join(pgbouncer_names(args.topology, nodes)))
        return 0
    try:
        compose = json.loads(args.compose_json.read_text())
        stack = swarm_stack(compose, args.topology, nodes, args.secrets_dir, args.load_workers)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    json.dump(stack, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def pgbouncer_names(topology: str, nodes: list[str]) -> list[str]:
    """The PgBouncer services, which are also the names their TLS certificate must carry."""
    return [f"pgbouncer-{node}" for node in nodes] if topology == "per-node" else ["pgbouncer"]


def swarm_stack(
    compose: dict, topology: str, nodes: list[str], secrets_dir: Path, load_workers: bool
) -> dict:
    if not nodes:
        raise ValueError("no app node given")
    check(topology, len(nodes))  # refuses a topology whose pools do not fit PostgreSQL
    services = compose["services"]
    owners = secret_owners(services["secrets"]["environment"]["SECRETS_OWNERS"])
    stack: dict = {"services": {}, "networks": {}, "volumes": {}, "secrets": {}, "configs": {}}

    def add(name: str, source: str, deploy: dict, **changes) -> None:
        service = swarm_service(services[source], **changes)
        service["deploy"] = {"endpoint_mode": "dnsrr", **deploy}
        user = service.get("user") or ""
        attach_secrets(stack, service, source, owners, secrets_dir, user)
        attach_configs(stack, service, source)
        stack["services"][name] = service

    single = {
        "mode": "replicated",
        "replicas": 1,
        "update_config": STOP_FIRST,
        "restart_policy": RESTART_ALWAYS,
    }
    on_database_node = {**single, "placement": {"constraints": [DATABASE_NODE]}}
    add("postgres", "postgres", on_database_node)
    add("redis", "redis", on_database_node)
    # A job: runs to completion once per deploy; it retries while PostgreSQL starts.
    add(
        "migrate",
        "migrate",
        {
            "mode": "replicated-job",
            "restart_policy": {"condition": "on-failure", "delay": "5s", "max_attempts": 10},
        },
    )
    if topology == "central":
        add("pgbouncer", "pgbouncer", on_database_node)
    else:
        for node, name in zip(nodes, pgbouncer_names(topology, nodes), strict=True):
            add(name, "pgbouncer", {**single, "placement": {"constraints": [f"node.hostname == {node}"]}})

    app_environment = None
    if topology == "per-node":
        # Each app task talks to the PgBouncer of the node it runs on: Swarm fills in the
        # node's host name when it creates the task, also after the task moves.
        url = services["app"]["environment"]["DATABASE_URL"]
        app_environment = {"DATABASE_URL": url.replace("@pgbouncer:", "@pgbouncer-{{.Node.Hostname}}:", 1)}
    add(
        "app",
        "app",
        {
            "mode": "replicated",
            "replicas": len(nodes),
            "placement": {"constraints": [APP_NODE]},
            "update_config": APP_UPDATE,
            "rollback_config": APP_ROLLBACK,
            "restart_policy": RESTART_ALWAYS,
        },
        environment=app_environment,
    )
    # The browser's way in, on every app node: host-mode ports (no routing mesh here, see
    # swarm/README.md), so a node's proxy is replaced stop-first, and nginx re-resolves
    # `app` (every replica, dnsrr) every 10 s (proxy/nginx.conf).
    add(
        "proxy",
        "proxy",
        {
            "mode": "global",
            "placement": {"constraints": [APP_NODE]},
            "update_config": {**STOP_FIRST, "delay": "10s"},
            "restart_policy": RESTART_ALWAYS,
        },
    )
    if load_workers:
        # Its Compose health check asks the master, which exists only while a test runs it:
        # Swarm would replace the worker as unhealthy meanwhile. Locust workers reconnect
        # to their master by themselves.
        add(
            LOAD_WORKER,
            LOAD_WORKER,
            {"mode": "global", "placement": {"constraints": [APP_NODE]}, "restart_policy": RESTART_ALWAYS},
            healthcheck={"disable": True},
        )

    used_networks = {net for service in stack["services"].values() for net in service["networks"]}
    for name in sorted(used_networks):
        stack["networks"][name] = overlay_network(compose["networks"][name])
    used_volumes = {
        mount["source"]
        for service in stack["services"].values()
        for mount in service.get("volumes", [])
        if mount["type"] == "volume"
    }
    stack["volumes"] = {name: {} for name in sorted(used_volumes)}
    return stack


def swarm_service(
    compose_service: dict, environment: dict | None = None, healthcheck: dict | None = None
) -> dict:
    """A Compose service as Swarm runs it: what Swarm ignores or refuses replaced or left out."""
    source = copy.deepcopy(compose_service)
    service = {
        key: source[key]
        for key in (
            "image",
            "entrypoint",
            "command",
            "user",
            "environment",
            "healthcheck",
            "stop_grace_period",
            "ulimits",
            "read_only",
            "cap_drop",
            "cap_add",
            "logging",
        )
        if source.get(key) is not None
    }
    if environment:
        service["environment"] = {**service.get("environment", {}), **environment}
    if healthcheck:
        service["healthcheck"] = healthcheck
    service["networks"] = sorted(source.get("networks") or {})
    # security_opt: Swarm (the docker 26 API) has no per-service no-new-privileges; the
    # nodes' dockerd sets it for every container instead (swarm/node/Dockerfile).
    mounts = [mount for mount in source.get("volumes", []) if mount.get("source") != "secrets"]
    # Swarm ignores `tmpfs:`, and its tmpfs mounts can have no owner (nor a mode, in the
    # docker 26 CLI's stack loader): root owns them, with the mode of the directory they
    # cover, which the images make 1777 for this; the service's user can write its run
    # directory, and nobody else is in the container to share it with.
    mounts += [{"type": "tmpfs", "target": entry.split(":", 1)[0]} for entry in source.get("tmpfs", [])]
    if "shm_size" in source:  # ignored by Swarm: PostgreSQL's parallel queries use /dev/shm
        shm = {"size": shm_bytes(source["shm_size"])}
        mounts.append({"type": "tmpfs", "target": "/dev/shm", "tmpfs": shm})  # noqa: S108 (a mount point)
    if mounts:
        service["volumes"] = [
            {key: mount[key] for key in ("type", "source", "target", "read_only", "tmpfs") if key in mount}
            for mount in mounts
        ]
    # Compose publishes on loopback (127.0.0.1:8443); Swarm cannot bind a host address:
    # host mode publishes on every address of the node.
    ports = [
        {"target": port["target"], "published": int(port["published"]), "protocol": "tcp", "mode": "host"}
        for port in source.get("ports", [])
    ]
    if ports:
        service["ports"] = ports
    return service


def shm_bytes(size: str | int) -> int:
    """Compose's shm_size ("256mb", or bytes as `config` prints it) in bytes."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(size).strip().lower())
    if not match:
        raise ValueError(f"shm_size {size!r} is not a size")
    return int(match[1]) * 1024 ** " kmg".index(match[2] or " ")


def secret_owners(text: str) -> dict[str, tuple[str, str]]:
    """docker-compose.yml's SECRETS_OWNERS ("postgres=999:999 app=10001:10001 ...")."""
    owners = {}
    for item in text.split():
        consumer, _, ids = item.partition("=")
        uid, _, gid = ids.partition(":")
        owners[consumer] = (uid, gid or uid)
    return owners


def attach_secrets(stack: dict, service: dict, name: str, owners: dict, secrets_dir: Path, user: str) -> None:
    """Every /run/secrets/<consumer>/<file> the service names, as a Swarm secret at that very
    path, readable by the consumer's user only (mode 0400), as the secrets volume has it."""
    text = json.dumps([service.get("environment", {}), service.get("healthcheck", {})])
    references = []
    for consumer, file in sorted(set(SECRET_PATH.findall(text))):
        path = secrets_dir / consumer / file
        if not path.is_file():
            raise ValueError(f"{name} needs {path}: run secrets/generate.py with SECRETS_DIR={secrets_dir}")
        if consumer not in owners:
            raise ValueError(f"{name} reads {consumer}'s secrets, but SECRETS_OWNERS names no user for it")
        key = f"{consumer}_{file}_{digest(path)}"
        stack["secrets"][key] = {"file": str(path)}
        uid, gid = owners[consumer]
        if user and user.split(":")[0] != uid:
            raise ValueError(f"{name} runs as {user} but reads {consumer}'s secrets, owned by {uid}")
        references.append(
            {
                "source": key,
                "target": f"/run/secrets/{consumer}/{file}",
                "uid": uid,
                "gid": gid,
                "mode": 0o400,
            }
        )
    if references:
        service["secrets"] = references


def attach_configs(stack: dict, service: dict, name: str) -> None:
    references = []
    for relative in CONFIG_FILES.get(name, ()):
        path = PROJECT / relative
        key = f"{relative.replace('/', '_')}_{digest(path)}"
        stack["configs"][key] = {"file": str(path)}
        references.append({"source": key, "target": f"{CONFIG_ROOT}/{relative}", "mode": 0o444})
    if references:
        service["configs"] = references


def digest(path: Path) -> str:
    """Swarm secrets and configs cannot change: a new content is a new name, and the
    services that use it are updated (rolled) to the new one."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def overlay_network(compose_network: dict) -> dict:
    """A Compose network as an overlay across the nodes, with its subnet (pg_hba.conf and
    PgBouncer's hba name them) and internal flag. Attachable: the tests' one-shot
    containers (the Locust master, psql) join them as Compose's `run` would."""
    network = {"driver": "overlay", "attachable": True}
    if compose_network.get("internal"):
        network["internal"] = True
    if compose_network.get("ipam", {}).get("config"):
        network["ipam"] = {
            "config": [{"subnet": entry["subnet"]} for entry in compose_network["ipam"]["config"]]
        }
    return network


if __name__ == "__main__":
    sys.exit(main())
