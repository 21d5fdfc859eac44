"""The Compose stack on a real Docker engine: built, brought up and torn down once for the module.

How the engine, the base image and the isolated project are provided, and when
these tests run at all: compose_harness.py.
"""

import fcntl
import os
import sys
import time
from datetime import UTC, datetime

import pytest
from compose_harness import (
    BUILD_TIMEOUT_S,
    COMPOSE_VERSIONS,
    ENGINE,
    EVERY_PROFILE,
    LOCK_FILE,
    LOCK_WAIT_S,
    LOCUST_PORT,
    PROMETHEUS_PORT,
    PROXY_PORT,
    RESULTS,
    TIMINGS,
    UP_TIMEOUT_S,
    ComposeStack,
    compose_command,
    port_is_free,
    run,
    wait_until_healthy,
    write_env_file,
)

STARTED_AT = pytest.StashKey[str]()


def pytest_collection_modifyitems(config, items):
    if os.environ.get("CI") or os.environ.get("COMPOSE_TEST"):
        return
    skip = pytest.mark.skip(reason="Compose end-to-end: runs in CI, or locally with `make compose-test`")
    for item in items:
        if "compose" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def compose_engine(tmp_path_factory):
    """DOCKER_HOST of an engine with the base image; a private one is stopped afterwards."""
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("w") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another Compose test session held {LOCK_FILE} for {LOCK_WAIT_S}s")
                time.sleep(2)
        started = time.monotonic()
        run([ENGINE, "install"], timeout=600)
        TIMINGS["install packages"] = time.monotonic() - started
        try:
            docker_host = run([ENGINE, "start"], timeout=120).stdout.strip()
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": os.environ.get("HOME", "/root"),
                "LANG": "C.UTF-8",
                "DOCKER_HOST": docker_host,
            }
            started = time.monotonic()
            run([ENGINE, "base-image"], timeout=600, env=env)
            TIMINGS["base image"] = time.monotonic() - started
            yield env
        finally:
            run([ENGINE, "stop"], timeout=180, check=False)


@pytest.fixture(scope="module", params=list(COMPOSE_VERSIONS))
def compose_stack(request, compose_engine, tmp_path_factory):
    """The stack built and up under PROJECT_NAME, once per Compose implementation; always
    `down -v` afterwards. Compose v2's `up --wait` output is kept in RESULTS (the README's)."""
    command, version, env = compose_command(request.param, compose_engine)
    env_file = tmp_path_factory.mktemp("compose") / "test.env"
    stack = ComposeStack(command, version, env, env_file)
    write_env_file(env_file)
    # Whatever an interrupted session left under this project name.
    stack.compose("down", "--volumes", "--remove-orphans", profiles=EVERY_PROFILE, check=False)
    for port in (PROXY_PORT, LOCUST_PORT, PROMETHEUS_PORT):
        assert port_is_free(port), f"127.0.0.1:{port} is in use; set TEST_STACK_OFFSET to move the test stack"
    failed_during_setup = True
    try:
        started = time.monotonic()
        stack.compose("build", profiles=EVERY_PROFILE, timeout=BUILD_TIMEOUT_S)
        TIMINGS["build images"] = time.monotonic() - started
        started = time.monotonic()
        if stack.v2:
            up = stack.compose("up", "--detach", "--wait", timeout=UP_TIMEOUT_S)
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "up-wait.txt").write_text(
                f"$ docker compose up --detach --wait    # Compose {version}\n{up.stderr}{up.stdout}"
            )
        else:
            stack.compose("up", "--detach", timeout=UP_TIMEOUT_S)
            wait_until_healthy(stack, UP_TIMEOUT_S)
        TIMINGS["up until healthy"] = time.monotonic() - started
        failed_during_setup = False
        yield stack
    finally:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            if failed_during_setup:  # a failed test carries its own window of the logs
                stack.print_diagnostics(sys.stderr)
            started = time.monotonic()
            stack.compose(
                "down", "--volumes", "--remove-orphans", profiles=EVERY_PROFILE, check=False, timeout=180
            )
            TIMINGS["down -v"] = time.monotonic() - started
            summary = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in TIMINGS.items())
            print(f"\ncompose test ({' '.join(command)} {version}): {summary}", file=sys.stderr)
            TIMINGS.clear()


@pytest.fixture(autouse=True)
def _mark_container_logs(request):
    """When a Compose test starts: its failure report carries the containers' logs from then on."""
    if "compose_stack" in request.fixturenames:
        request.node.stash[STARTED_AT] = datetime.now(UTC).isoformat(timespec="seconds")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    stack = getattr(item, "funcargs", {}).get("compose_stack")
    if report.failed and isinstance(stack, ComposeStack) and STARTED_AT in item.stash:
        report.sections.append(("container logs during the test", stack.logs_since(item.stash[STARTED_AT])))
    return report
