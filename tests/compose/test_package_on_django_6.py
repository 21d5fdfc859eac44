"""pooled-postgres on the current Django 6.x, which needs Python 3.12 or newer.

The host has Debian 12's Python 3.11 (Django 5.2 LTS, the rest of the suite); the app
image has Debian 13's Python 3.13. Here, in a container of that image, the package is
installed with pip into a fresh virtualenv beside Django 6.0 from PyPI, and its checks
run both ways.
"""

import pytest
from compose_harness import PROJECT, PROJECT_NAME, run

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]

IMAGE = f"{PROJECT_NAME}-django6-check"
SETTINGS = PROJECT / "tests" / "package_settings"  # the same as tests/test_adoption_package.py's


def test_pip_install_and_the_checks_on_django_6(compose_engine):
    run(
        ["docker", "build", "--quiet", "-f", PROJECT / "app" / "Dockerfile", "-t", IMAGE, PROJECT],
        timeout=600,
        env={**compose_engine, "DOCKER_BUILDKIT": "0"},
    )
    writes = "\n".join(
        f"cat > /tmp/work/{path.name} <<'EOF'\n{path.read_text()}\nEOF"
        for path in sorted(SETTINGS.glob("*.py"))
    )
    script = f"""
set -o errexit -o nounset
mkdir /tmp/work && cp -r /opt/chat/pooled-postgres /tmp/work/source
python3.13 -m venv /tmp/work/venv
/tmp/work/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check \\
    /tmp/work/source 'Django>=6.0,<6.1'
{writes}
cd /tmp/work
echo "django $(venv/bin/python -m django --version)"
venv/bin/python -m django check --settings pooled_settings
venv/bin/python -m django check --settings leaking_settings 2>&1 || echo "exit status $?"
"""
    result = run(
        ["docker", "run", "--rm", "--user", "10001:10001", "--entrypoint", "bash", IMAGE, "-c", script],
        timeout=600,
        env=compose_engine,
        check=False,
    )
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("django 6.0"), result.stdout
        assert "System check identified no issues (0 silenced)." in lines[1]
        assert "(pooled_postgres.E001) DATABASES['default'] keeps connections open" in result.stdout
        assert lines[-1] == "exit status 1"
    finally:
        run(["docker", "image", "rm", IMAGE], timeout=60, env=compose_engine, check=False)
