"""The Swarm stack file swarm/stack.py makes from docker-compose.yml, read without a swarm.

What the stack promises (dnsrr, placement, the drain-safe update policy, secrets at the
paths the services read, configs where the images keep theirs, the budget refused when
the pools do not fit) checked on the generator's real output for the real Compose file;
and the docker CLI's own loader (`docker stack config`, no engine needed) accepts it.
The stack running on three nodes is tests/swarm/ (`make swarm-test`).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.budget import DIRECT_LOGINS, budget, check
from swarm.stack import APP_NODE, CONFIG_FILES, CONFIG_ROOT, DATABASE_NODE, SECRET_PATH, swarm_stack

PROJECT = Path(__file__).resolve().parent.parent
NODES = ["node1", "node2", "node3"]
# Keys Swarm ignores or refuses (docker/cli's compose loader), which the generator replaces.
NOT_FOR_SWARM = {
    "build",
    "depends_on",
    "restart",
    "security_opt",
    "shm_size",
    "tmpfs",
    "profiles",
    "network_mode",
}
# Compose v2 as compose/engine.sh fetches it (the Compose tests do), where no
# `docker compose` is installed.
ENGINE_COMPOSE_CONFIG = (
    Path(os.environ.get("CHAT_ENGINE_CACHE", "/var/cache/chat-compose")) / "compose-v2/docker-config"
)


def run(argv, **options) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **options)


@pytest.fixture(scope="module")
def compose_json(tmp_path_factory) -> dict:
    """docker-compose.yml as Compose resolves it, with .env.example's values."""
    env = {**os.environ}
    if ENGINE_COMPOSE_CONFIG.is_dir():
        env.setdefault("DOCKER_CONFIG", str(ENGINE_COMPOSE_CONFIG))
    if shutil.which("docker") is None or run(["docker", "compose", "version"], env=env).returncode:
        pytest.skip("no Compose v2 (`docker compose`): compose/engine.sh compose-v2 fetches it")
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    shutil.copy(PROJECT / ".env.example", env_file)
    result = run(
        ["docker", "compose", "--project-directory", PROJECT, "--file", PROJECT / "docker-compose.yml",
         "--env-file", env_file, "--profile", "loadtest", "config", "--format", "json"],
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """Every secret, made by the stack's own generator (a few EC keys: about a second)."""
    directory = tmp_path_factory.mktemp("secrets")
    env = {**os.environ, "SECRETS_DIR": str(directory), "TLS_HOSTS_PGBOUNCER": "pgbouncer-node1"}
    result = run([sys.executable, PROJECT / "secrets" / "generate.py"], env=env)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.fixture(scope="module", params=["per-node", "central"])
def stack_file(request, compose_json, secrets_dir) -> dict:
    return swarm_stack(compose_json, request.param, NODES, secrets_dir, load_workers=True)


def test_every_service_is_reached_by_dns_round_robin_and_keeps_nothing_swarm_ignores(stack_file):
    for name, service in stack_file["services"].items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
        assert not NOT_FOR_SWARM & set(service), f"{name}: {NOT_FOR_SWARM & set(service)}"


def test_the_databases_are_pinned_by_label_with_their_volume(stack_file):
    for name in ("postgres", "redis"):
        deploy = stack_file["services"][name]["deploy"]
        assert deploy["placement"]["constraints"] == [DATABASE_NODE]
        assert (deploy["replicas"], deploy["update_config"]["order"]) == (1, "stop-first")
    mounts = stack_file["services"]["postgres"]["volumes"]
    assert {"type": "volume", "source": "postgres-data", "target": "/var/lib/postgresql/data"} in mounts
    assert stack_file["volumes"] == {"postgres-data": {}}


def test_one_app_replica_per_app_node_replaced_one_at_a_time_after_its_drain(stack_file, compose_json):
    app = stack_file["services"]["app"]
    deploy = app["deploy"]
    assert (deploy["mode"], deploy["replicas"]) == ("replicated", len(NODES))
    assert deploy["placement"]["constraints"] == [APP_NODE]
    update = deploy["update_config"]
    assert (update["parallelism"], update["order"], update["failure_action"]) == (1, "stop-first", "rollback")
    # The drain fits in what Swarm waits before SIGKILL: graceful_daphne's drain (10 s)
    # within supervisord's stopwaitsecs, within the stop period Compose and Swarm share.
    stopwaitsecs = int(
        re.search(r"^stopwaitsecs = (\d+)", (PROJECT / "app/supervisord.conf").read_text(), re.M)[1]
    )
    grace = seconds(app["stop_grace_period"])
    assert app["stop_grace_period"] == compose_json["services"]["app"]["stop_grace_period"]
    assert 10 < stopwaitsecs < grace, (stopwaitsecs, grace)


def test_each_topology_has_its_pgbouncers_and_the_app_talks_to_its_own(stack_file, request):
    pgbouncers = sorted(name for name in stack_file["services"] if name.startswith("pgbouncer"))
    url = stack_file["services"]["app"]["environment"]["DATABASE_URL"]
    if "per-node" in request.node.callspec.id:
        assert pgbouncers == [f"pgbouncer-{node}" for node in NODES]
        for node in NODES:
            constraints = stack_file["services"][f"pgbouncer-{node}"]["deploy"]["placement"]["constraints"]
            assert constraints == [f"node.hostname == {node}"]
        assert "@pgbouncer-{{.Node.Hostname}}:6432/" in url
    else:
        assert pgbouncers == ["pgbouncer"]
        assert "@pgbouncer:6432/" in url


def test_secrets_are_swarm_secrets_where_and_as_whom_the_services_read_them(stack_file, compose_json):
    owners = dict(
        item.split("=")
        for item in compose_json["services"]["secrets"]["environment"]["SECRETS_OWNERS"].split()
    )
    for name, service in stack_file["services"].items():
        assert all(mount.get("source") != "secrets" for mount in service.get("volumes", [])), name
        wanted = set(
            SECRET_PATH.findall(json.dumps([service.get("environment"), service.get("healthcheck")]))
        )
        given = {tuple(ref["target"].split("/")[3:]): ref for ref in service.get("secrets", [])}
        assert set(given) == wanted, name
        for (consumer, _file), ref in given.items():
            assert f"{ref['uid']}:{ref['gid']}" == owners[consumer]
            assert ref["mode"] == 0o400
            assert ref["source"] in stack_file["secrets"]


def test_configs_are_the_repositorys_files_mounted_over_the_images_copies(stack_file):
    for name, files in CONFIG_FILES.items():
        service = stack_file["services"][name if name in stack_file["services"] else "pgbouncer-node1"]
        assert {ref["target"] for ref in service["configs"]} == {f"{CONFIG_ROOT}/{path}" for path in files}
        dockerfile = (PROJECT / name / "Dockerfile").read_text()
        for path in files:  # where the image has it: COPY <path or its folder/> ... /opt/chat/<folder>/
            folder = path.rsplit("/", 1)[0]
            copied = rf"^COPY .*(?:{re.escape(path)}|{folder}/) .*{CONFIG_ROOT}/{folder}/"
            assert re.search(copied, dockerfile, re.M), path
    for config in stack_file["configs"].values():
        assert Path(config["file"]).is_file()


def test_the_proxy_is_published_on_every_app_node_in_host_mode(stack_file):
    proxy = stack_file["services"]["proxy"]
    assert proxy["deploy"]["mode"] == "global"
    assert proxy["ports"] == [{"target": 8443, "published": 8443, "protocol": "tcp", "mode": "host"}]
    assert all("ports" not in service for name, service in stack_file["services"].items() if name != "proxy")


def test_the_docker_cli_reads_the_stack_file(stack_file, tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI")
    path = tmp_path / "stack.json"
    path.write_text(json.dumps(stack_file))
    result = run(["docker", "stack", "config", "--compose-file", path])
    assert result.returncode == 0, result.stderr


def test_the_budget_formula_with_this_repositorys_numbers():
    per_node, central = budget("per-node", 3), budget("central", 3)
    assert (per_node.per_pgbouncer, per_node.available, per_node.direct) == (
        15,
        97,
        sum(DIRECT_LOGINS.values()),
    )
    assert (per_node.needed, per_node.app_role_bound) == (3 * 15 + 3, 36)
    assert (central.needed, central.app_role_bound) == (15 + 3, 12)


def test_a_topology_whose_pools_do_not_fit_is_refused_before_any_file_is_written(compose_json, secrets_dir):
    check("per-node", 6)  # 6 x 15 + 3 = 93 <= 97
    with pytest.raises(ValueError, match=r"7 PgBouncer\(s\) x max_db_connections 15 \+ 3 direct = 108 > 97"):
        swarm_stack(compose_json, "per-node", [f"node{n}" for n in range(1, 8)], secrets_dir, False)
    swarm_stack(compose_json, "central", [f"node{n}" for n in range(1, 8)], secrets_dir, False)


def seconds(duration: str) -> float:
    """A Compose duration ("25s", "1m0s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(amount) * units[unit] for amount, unit in re.findall(r"([\d.]+)([hms])", duration))
