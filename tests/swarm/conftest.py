"""The stack on a three-node swarm: deployed once per PgBouncer topology, for the module.

Runs only under `make swarm-test`: swarm/swarm.sh run makes the nodes and the swarm,
exports SWARM_STATE, and removes everything afterwards. Elsewhere these tests are
skipped, as the Compose tests are outside CI.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest
from swarm_harness import PROJECT, Swarm

from swarm.budget import SHIPPED_TOPOLOGY, TOPOLOGIES
from swarm.figures import read, tables

# What the tests keep for a reader: each load run's summary and samples, and the figures
# (README: the multi-host section).
RESULTS = PROJECT / "results" / "swarm-test"


def pytest_sessionfinish(session, exitstatus):
    """The figures of this session's runs as tables, for the README (swarm/figures.py)."""
    rows = read(RESULTS) if os.environ.get("SWARM_STATE") else []
    if rows:
        (RESULTS / "figures.md").write_text(tables(rows))


def selected_topologies() -> list[str]:
    """SWARM_TOPOLOGIES (`make swarm-test SWARM_TOPOLOGIES="per-node central"`), or the shipped
    one: CI tests what the repository recommends; both side by side are the comparison that
    chose it (swarm/README.md)."""
    names = os.environ.get("SWARM_TOPOLOGIES", "").split() or [SHIPPED_TOPOLOGY]
    unknown = sorted(set(names) - set(TOPOLOGIES))
    if unknown:
        raise pytest.UsageError(f"SWARM_TOPOLOGIES: unknown {unknown}; choose from {list(TOPOLOGIES)}")
    return names


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("SWARM_STATE"):
        reason = "the three-node swarm: runs under `make swarm-test` (swarm/swarm.sh run)"
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "swarm" in item.keywords:
                item.add_marker(skip)
        return
    topologies = selected_topologies()
    kept, left = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        topology = callspec.params.get("swarm") if callspec else None
        (left if topology and topology not in topologies else kept).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = kept


@pytest.fixture(scope="module", params=TOPOLOGIES)
def swarm(request):
    """The stack deployed in one topology and converged; removed again afterwards (the
    nodes stay for the next topology; swarm.sh run removes them at the end)."""
    cluster = Swarm(Path(os.environ["SWARM_STATE"]), request.param)
    try:
        cluster.swarm_sh("deploy", request.param)
        yield cluster
    finally:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            print(cluster.manager("service", "ls", check=False).stdout, file=sys.stderr)
        shutil.copytree(cluster.results, RESULTS / request.param, dirs_exist_ok=True)
        cluster.swarm_sh("remove-stack")
