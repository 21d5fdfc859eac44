"""pooled-postgres as a user gets it: `pip install ./pooled-postgres` into a fresh virtualenv.

Only the package's own declared dependencies come with it (from PyPI), so a missing
one, or a module left out of the distribution, fails here.
"""

import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LEAKING_SETTINGS = """
SECRET_KEY = "a-test-key-that-is-long-enough-for-djangos-own-deploy-checks-0123456789"
INSTALLED_APPS = ["pooled_postgres"]
ASGI_APPLICATION = "mysite.asgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "CONN_MAX_AGE": 60}}
"""
POOLED_SETTINGS = """
from pooled_postgres.config import pooled_database
SECRET_KEY = "a-test-key-that-is-long-enough-for-djangos-own-deploy-checks-0123456789"
INSTALLED_APPS = ["pooled_postgres"]
ASGI_APPLICATION = "mysite.asgi.application"
USE_TZ = True
DATABASES = {"default": pooled_database({"NAME": "app", "HOST": "pgbouncer", "PORT": "6432"})}
"""


def test_pip_installs_it_into_a_fresh_virtualenv_and_its_checks_run(tmp_path):
    source = tmp_path / "pooled-postgres"
    shutil.copytree(
        PROJECT / "pooled-postgres",
        source,
        ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    versions = subprocess.run(
        [python, "-c", "import django, psycopg, psycopg_pool; print(django.__version__)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert versions.stdout.startswith(("5.2", "6.")), versions.stdout

    for name, settings in (("leaking", LEAKING_SETTINGS), ("pooled", POOLED_SETTINGS)):
        (tmp_path / f"{name}_settings.py").write_text(settings)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}

    leaking = subprocess.run(
        [python, "-m", "django", "check", "--settings", "leaking_settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert leaking.returncode == 1
    assert "pooled_postgres.E001" in leaking.stderr
    pooled = subprocess.run(
        [python, "-m", "django", "check", "--settings", "pooled_settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pooled.returncode == 0, pooled.stderr
    # The doctor and the watch are in the distribution too.
    listed = subprocess.run(
        [python, "-m", "django", "help", "--settings", "pooled_settings"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "pooler_doctor" in listed.stdout
    watch_help = subprocess.run(
        [python, "-m", "pooled_postgres.watch", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--postgres-dsn" in watch_help.stdout
