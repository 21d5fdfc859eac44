"""pooled-postgres as a user gets it: `pip install ./pooled-postgres` into a fresh virtualenv.

Only the package's own declared dependencies come with it (from PyPI), so a missing
one, or a module left out of the distribution, fails here. The settings it checks are
tests/package_settings/ (the Django 6 test in tests/compose/ checks the same).
"""

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SETTINGS = Path(__file__).resolve().parent / "package_settings"


def test_pip_installs_it_into_a_fresh_virtualenv_and_its_checks_run(tmp_path):
    source = tmp_path / "pooled-postgres"
    shutil.copytree(
        PROJECT / "pooled-postgres",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [python, *args],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(SETTINGS), "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    installed = run("-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source))
    assert installed.returncode == 0, installed.stderr
    assert run("-m", "django", "--version").stdout.startswith(("5.2", "6."))

    leaking = run("-m", "django", "check", "--settings", "leaking_settings")
    assert leaking.returncode == 1
    assert "pooled_postgres.E001" in leaking.stderr
    pooled = run("-m", "django", "check", "--settings", "pooled_settings")
    assert pooled.returncode == 0, pooled.stderr
    # The doctor and the watch are in the distribution too.
    assert "pooler_doctor" in run("-m", "django", "help", "--settings", "pooled_settings").stdout
    assert "--postgres-dsn" in run("-m", "pooled_postgres.watch", "--help").stdout
