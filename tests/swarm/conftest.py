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

from swarm.budget import TOPOLOGIES
from swarm.figures import read, tables

# What the tests keep for a reader: each load run's summary and samples, and the figures
# (README: the multi-host section).
RESULTS = PROJECT / "results" / "swarm-test"


def pytest_sessionfinish(session, exitstatus):
    """The figures of this session's runs as tables, for the README (swarm/figures.py)."""
    rows = read(RESULTS) if os.environ.get("SWARM_STATE") else []
    if rows:
        (RESULTS / "figures.md").write_text(tables(rows))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("SWARM_STATE"):
        return
    skip = pytest.mark.skip(reason="the three-node swarm: runs under `make swarm-test` (swarm/swarm.sh run)")
    for item in items:
        if "swarm" in item.keywords:
            item.add_marker(skip)


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
