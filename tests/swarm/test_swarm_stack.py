"""The stack across three swarm nodes, under load: placement, the connection budget, and faults.

Each test runs in the shipped PgBouncer topology (swarm/budget.py), and in the others named
by SWARM_TOPOLOGIES (conftest.py). While a fault happens, chatters write through every
node's proxy and Locust's workers drive every app replica; afterwards every message
written is looked up in PostgreSQL (loadtest/faults.py's ledger) and the app role's
server connections are held to the topology's budget (swarm/budget.py). Faults, in this
order: a drained node, a worker node stopped outright (each leaves its replica where it
moved), a rolling deploy of the app (which spreads the replicas again), one PgBouncer
restarted.
"""

import time
from collections import Counter

import pytest
from swarm_harness import (
    PROJECT,
    RECOVERY_LIMIT_S,
    STACK,
    Chatters,
    PoolSampler,
    Swarm,
    recovery_seconds,
    run,
    unexpected_load_errors,
)

from swarm.budget import SHIPPED_TOPOLOGY

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(1800)]

# The faults run in the shipped topology only: what a node lost or a deploy does to the app
# does not depend on where PgBouncer runs, and each costs minutes. Every topology tested runs
# placement, the budget (per node, its growth with nodes) and the PgBouncer restart, where
# they differ.
shipped_topology_only = pytest.mark.parametrize("swarm", [SHIPPED_TOPOLOGY], indirect=True)

LOAD_USERS = 150
LOAD_HOLD_S = 30.0
# Load through a fault: a drain or a lost node is over (its replica moved, every proxy
# answering) within about 20 s of its start; a rolling deploy of three replicas takes
# about 90 s (10 s between them, each drained and replaced).
FAULT_HOLD_S = 45.0
DEPLOY_HOLD_S = 110.0
# What a client of a replica that stops may see, and nothing else: its socket closed
# with 1001 (graceful_daphne's drain), a message refused as going_away while the
# server drains (sent again after reconnecting).
DRAIN = ("code 1001", "going_away")
# A node's proxy that stops (drain, or the node gone) cuts its WebSockets without a
# close frame (nginx's worker_shutdown_timeout): 1006, and the chatters send again.
PROXY_GONE = ("code 1006", "ConnectionResetError", "WebSocketConnectionClosedException")
# A PgBouncer restarting: the app answers unavailable, the client sends again.
POOLER_GONE = ("unavailable",)
# A node gone without a word: connections to its tasks neither answer nor reset (its
# network namespace is gone), so a message in flight there waits out the client's timeout,
# and so does a connection opened to its app task until the managers mark the node down
# and drop the task from `app`'s DNS records; the client then connects again elsewhere.
NODE_GONE = ("no ack within", "SocketFailure('TimeoutError: timed out')")
UPDATE_TIMEOUT_S = 600


def test_every_service_runs_where_its_labels_put_it(swarm: Swarm):
    nodes = sorted(node.name for node in swarm.nodes)
    assert swarm.nodes_running("postgres") == ["node1"]  # chat.database
    assert swarm.nodes_running("redis") == ["node1"]
    assert swarm.nodes_running("app") == nodes  # one replica per app node
    assert swarm.nodes_running("proxy") == nodes
    assert swarm.nodes_running("locust-worker") == nodes
    if swarm.topology == "per-node":
        for node in nodes:
            assert swarm.nodes_running(f"pgbouncer-{node}") == [node]
    else:
        assert swarm.nodes_running("pgbouncer") == ["node1"]
    applied = swarm.psql("SELECT count(*) AS n FROM django_migrations WHERE app = 'chat'")
    assert int(applied[0]["n"]) >= 1  # the migrate job ran to completion


def test_secrets_and_configs_are_swarm_objects_where_compose_has_files(swarm: Swarm):
    secrets = swarm.manager("secret", "ls", "--format", "{{.Name}}").stdout.split()
    assert any(name.startswith(f"{STACK}_app_POSTGRES_APP_PASSWORD_") for name in secrets), secrets
    app = swarm.container("app", "node1")
    owner_mode = swarm.docker(
        "node1", "exec", app, "stat", "-c", "%u %a", "/run/secrets/app/POSTGRES_APP_PASSWORD"
    )
    assert owner_mode.stdout.split() == ["10001", "400"]
    postgres = swarm.container("postgres", "node1")
    served = swarm.docker("node1", "exec", postgres, "cat", "/opt/chat/postgres/postgresql.conf").stdout
    assert served == (PROJECT / "postgres" / "postgresql.conf").read_text()
    volumes = swarm.manager("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"{STACK}_secrets" not in volumes  # Compose's secrets volume has no place here


@shipped_topology_only
def test_the_browser_path_answers_on_every_node(swarm: Swarm):
    with Chatters(swarm, clients=1) as chatters:
        seconds = recovery_seconds(swarm, chatters.room, time.monotonic(), swarm.proxy_urls())
    assert seconds < RECOVERY_LIMIT_S


def test_server_connections_grow_with_app_nodes_never_with_users_within_the_budget(swarm: Swarm):
    """The same users on every app node, and per node also on 1 and 2 of them first (one
    replica per node): PostgreSQL's count may grow by one pool per PgBouncer in use, never
    with the users. A central PgBouncer is one pool whatever the nodes, so there the steps
    below three would only repeat the bound. On all three nodes, every PgBouncer's pool is
    sampled too: each served, each within its pool."""
    nodes = len(swarm.nodes)
    steps = range(1, nodes + 1) if swarm.topology == "per-node" else [nodes]
    try:
        for replicas in steps:
            scale_app(swarm, replicas)
            if swarm.topology == "per-node":
                # From zero: a PgBouncer keeps idle server connections up to server_idle_timeout
                # (10 min), which would count an earlier step's pools against this one's bound.
                restart(swarm, *swarm.pgbouncer_services())
            with PoolSampler(swarm) as pools:
                hold_s = LOAD_HOLD_S if replicas == nodes else LOAD_HOLD_S / 2
                summary = swarm.start_load(f"scale-{replicas}", LOAD_USERS, hold_s).summary()
            in_use = len(set(swarm.nodes_running("app"))) if swarm.topology == "per-node" else 1
            bound = in_use * swarm.budget.app_role_per_pgbouncer
            assert summary["failures"] == 0, summary["errors"]
            assert summary["server_connections_peak"] <= bound, swarm.budget.formula()
            swarm.record(
                {
                    "run": f"{replicas} app node(s)",
                    "users": LOAD_USERS,
                    "messages_per_s": summary["messages_per_s"],
                    "server_connections_peak": summary["server_connections_peak"],
                    "bound": bound,
                }
            )
        peaks = pools.server_peaks()
        assert set(peaks) == set(swarm.pgbouncer_services())  # every PgBouncer served: every node driven
        assert all(0 < peak <= swarm.budget.app_role_per_pgbouncer for peak in peaks.values()), peaks
        swarm.record(
            {
                "run": "steady load",
                "users": LOAD_USERS,
                "messages_per_s": summary["messages_per_s"],
                "latency_ms": summary["latency_ms"],
                "server_connections_peak": summary["server_connections_peak"],
                "bound": swarm.budget.app_role_bound,
                "per_pgbouncer_peak": peaks,
            }
        )
    finally:
        scale_app(swarm, nodes)


@shipped_topology_only
def test_a_drained_node_hands_its_replica_over_and_loses_nothing(swarm: Swarm):
    def drain(node: str) -> None:
        swarm.manager("node", "update", "--availability", "drain", node)

    def make_active(node: str) -> None:
        swarm.manager("node", "update", "--availability", "active", node)

    node, moved_s, recovered, outcome, summary = worker_node_away(swarm, "drain", drain, make_active)
    assert_nothing_lost(outcome)
    assert set(outcome["close_codes"]) <= {"1001", "1006"}, outcome["close_codes"]
    assert unexpected_load_errors(summary, DRAIN + PROXY_GONE) == []
    assert summary["server_connections_peak"] <= swarm.budget.app_role_bound
    assert recovered < RECOVERY_LIMIT_S
    swarm.record(
        {"run": f"{node} drained", "replica_moved_s": moved_s, "recovery_s": recovered, **tally(outcome)}
    )


@shipped_topology_only
def test_a_stopped_worker_node_loses_nothing_acknowledged(swarm: Swarm):
    def kill(node: str) -> None:
        # Stopped outright: SIGKILL to the node's engine and everything it runs.
        run(["docker", "kill", swarm.node(node).container], timeout=60)

    def start(node: str) -> None:
        run(["docker", "start", swarm.node(node).container], timeout=60)
        wait_until(lambda: f"{node} Ready" in node_states(swarm), RECOVERY_LIMIT_S * 2, f"{node} Ready again")

    node, moved_s, recovered, outcome, summary = worker_node_away(swarm, "node-stopped", kill, start)
    # A message in flight to the node waited out the chatter's timeout (a hang, counted),
    # then went again through another node: nothing acknowledged or written is lost.
    assert_nothing_lost({**outcome, "hangs": 0})
    assert set(outcome["close_codes"]) <= {"1001", "1006"}, outcome["close_codes"]
    assert unexpected_load_errors(summary, DRAIN + PROXY_GONE + NODE_GONE) == []
    assert summary["server_connections_peak"] <= swarm.budget.app_role_bound
    assert recovered < RECOVERY_LIMIT_S
    swarm.record(
        {
            "run": f"{node} stopped",
            "replica_moved_s": moved_s,
            "recovery_s": recovered,
            "hangs": outcome["hangs"],
            **tally(outcome),
        }
    )


@shipped_topology_only
def test_a_rolling_deploy_drains_every_replica_and_loses_nothing(swarm: Swarm):
    """After the drained and the stopped node (which leave their replicas elsewhere), it also
    spreads the replicas one per node again, as Swarm places each new task where fewest run."""
    # Long enough for three replicas, each drained, replaced, then followed by the delay.
    load = swarm.start_load("rolling-deploy", LOAD_USERS, DEPLOY_HOLD_S)
    load.wait_until_at_full_load()
    with Chatters(swarm) as chatters:
        started = time.monotonic()
        swarm.force_update("app", timeout=UPDATE_TIMEOUT_S)
        deploy_s = time.monotonic() - started
        recovered = recovery_seconds(swarm, chatters.room, time.monotonic(), swarm.proxy_urls())
    outcome, summary = chatters.outcome(), load.summary()
    assert_nothing_lost(outcome)
    # Every client of a stopped replica was told (1001), none was cut (1006).
    assert set(outcome["close_codes"]) == {"1001"}, outcome["close_codes"]
    assert unexpected_load_errors(summary, DRAIN) == []
    assert summary["server_connections_peak"] <= swarm.budget.app_role_bound
    assert swarm.nodes_running("app") == sorted(node.name for node in swarm.nodes)
    assert recovered < RECOVERY_LIMIT_S
    swarm.record(
        {"run": "rolling deploy", "deploy_s": round(deploy_s, 1), "recovery_s": recovered, **tally(outcome)}
    )


def test_restarting_one_pgbouncer_is_noticed_only_where_it_serves(swarm: Swarm):
    restarted = swarm.pgbouncer_services()[-1]  # node3's, or the central one
    load = swarm.start_load("pgbouncer-restart", LOAD_USERS, LOAD_HOLD_S)
    load.wait_until_at_full_load()
    with Chatters(swarm) as chatters:
        before = swarm.app_errors_by_node()
        started = time.monotonic()
        restart(swarm, restarted)
        recovered = recovery_seconds(swarm, chatters.room, started, swarm.proxy_urls())
        after = swarm.app_errors_by_node()
    outcome, summary = chatters.outcome(), load.summary()
    assert_nothing_lost(outcome)
    assert unexpected_load_errors(summary, POOLER_GONE) == []
    noticed = sorted(node for node in after if after[node] - before.get(node, Counter()))
    if swarm.topology == "per-node":
        assert noticed in ([], ["node3"]), f"app errors on {noticed}: only node3's PgBouncer restarted"
    swarm.record(
        {"run": f"{restarted} restarted", "noticed_on": noticed, "recovery_s": recovered, **tally(outcome)}
    )


# --- helpers --------------------------------------------------------------------------------


def assert_nothing_lost(outcome: dict) -> None:
    assert outcome["acknowledged"] > 0
    for key in (
        "lost",
        "lost_unacknowledged",
        "stored_unacknowledged",
        "duplicates",
        "ack_mismatches",
        "hangs",
    ):
        assert outcome[key] == 0, (key, outcome)
    assert outcome["stragglers"] == []


def wait_until(predicate, seconds: float, what: str) -> float:
    """Seconds until ``predicate()`` holds; fails naming ``what`` after ``seconds``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"{what}: not within {seconds:g}s"
        time.sleep(1)
    return round(time.monotonic() - started, 1)


def worker_node_away(swarm: Swarm, name: str, take_away, give_back) -> tuple[str, float, float, dict, dict]:
    """Under load and chatters, ``take_away(node)`` on a worker node that runs an app replica;
    once the replica runs elsewhere and every other node's proxy answers, ``give_back(node)``.
    Its replica stays where it went (Swarm does not rebalance): the rolling deploy does.
    Returns the node, seconds until the replica moved and until recovery, the chatters'
    outcome and the load's summary."""
    node = worker_with_an_app_replica(swarm)
    load = swarm.start_load(name, LOAD_USERS, FAULT_HOLD_S)
    try:
        load.wait_until_at_full_load()
        with Chatters(swarm) as chatters:
            started = time.monotonic()
            take_away(node)
            moved_s = wait_for_app_replicas(swarm, away_from=node)
            recovered = recovery_seconds(swarm, chatters.room, started, swarm.proxy_urls(but=node))
        outcome, summary = chatters.outcome(), load.summary()
    finally:
        give_back(node)
        swarm.wait_converged()
    return node, moved_s, recovered, outcome, summary


def worker_with_an_app_replica(swarm: Swarm) -> str:
    """A node to drain or stop: one that runs an app replica, and not node1, whose database
    is another fault (make chaos restarts PostgreSQL on one host)."""
    return max(node for node in swarm.nodes_running("app") if node != "node1")


def wait_for_app_replicas(swarm: Swarm, away_from: str) -> float:
    """Seconds until every app replica runs again, none on ``away_from``: the tasks moved."""
    wanted = len(swarm.nodes)

    def moved() -> bool:
        tasks = swarm.nodes_running("app")
        return len(tasks) == wanted and away_from not in tasks

    return wait_until(moved, RECOVERY_LIMIT_S * 2, f"{wanted} app replicas away from {away_from}")


def scale_app(swarm: Swarm, replicas: int) -> None:
    """The app at that many replicas, converged (nothing done if it is there already)."""
    if len(swarm.nodes_running("app")) != replicas:
        scale = f"{STACK}_app={replicas}"
        swarm.manager("service", "scale", "--detach=false", scale, timeout=UPDATE_TIMEOUT_S)
        swarm.wait_converged()


def node_states(swarm: Swarm) -> list[str]:
    return swarm.manager("node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout.splitlines()


def restart(swarm: Swarm, *services: str) -> None:
    """Every task of the services replaced (forced updates, detached, all at once), and running
    healthy again: not waiting out the updates' monitor period, which only watches for a failure."""

    def running(service: str) -> set:
        return set(swarm.tasks_running(service, stopping_too=True))

    old_tasks = {service: running(service) for service in services}
    for service in services:
        swarm.manager("service", "update", "--detach", "--force", f"{STACK}_{service}")
    for service in services:
        wait_until(
            lambda service=service: running(service).isdisjoint(old_tasks[service]),
            UPDATE_TIMEOUT_S,
            f"{service} replaced",
        )
    swarm.wait_converged()


def tally(outcome: dict) -> dict:
    return {key: outcome[key] for key in ("sent", "acknowledged", "lost", "close_codes", "errors_by_kind")}
