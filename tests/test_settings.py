"""Production settings: Django's deploy checks, migrations in sync, secrets refused when unsafe."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from native.profiles import SHIPPED

APP = Path(__file__).resolve().parent.parent / "app"
PGBOUNCER = APP.parent / "pgbouncer"


def manage(stack, *args, **env_overrides):
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **stack.app_env(SHIPPED)}
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=APP, env=env, capture_output=True, text=True, timeout=60
    )


def test_deploy_checks_pass_with_production_settings(stack):
    result = manage(stack, "check", "--deploy", "--fail-level", "WARNING", DJANGO_HTTPS="true")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_deploy_checks_catch_plain_http(stack):
    """Not vacuous: the same check fails when HTTPS protections are off."""
    result = manage(stack, "check", "--deploy", "--fail-level", "WARNING", DJANGO_HTTPS="false")
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stderr


def test_migrations_match_the_models(stack):
    result = manage(stack, "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"DJANGO_SECRET_KEY_FILE": None, "DJANGO_SECRET_KEY": "change-me-django-secret-key-" + "x" * 40},
            "DJANGO_SECRET_KEY is still a placeholder",
        ),
        ({"DJANGO_SECRET_KEY_FILE": None, "DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY is not set"),
        ({"DJANGO_SECRET_KEY_FILE": None, "DJANGO_SECRET_KEY": "short"}, "shorter than 50 characters"),
        (
            {"DATABASE_PASSWORD_FILE": None, "DATABASE_PASSWORD": "change-me-app"},
            "DATABASE_PASSWORD is still a placeholder",
        ),
        ({"DJANGO_ALLOWED_HOSTS": None}, "DJANGO_ALLOWED_HOSTS is not set"),
        (
            {"CHAT_SHOW_POOL": "true", "CHAT_SHOW_POOL_PGBOUNCER_INI": "/nonexistent/pgbouncer.ini"},
            "CHAT_SHOW_POOL is on, but PgBouncer's bound cannot be read ([Errno 2]",
        ),
        (
            {"CHAT_SHOW_POOL": "true", "CHAT_SHOW_POOL_PGBOUNCER_INI": str(PGBOUNCER / "pgbouncer_hba.conf")},
            "pgbouncer_hba.conf is not an ini file: File contains no section headers.",
        ),
        (
            {"CHAT_DATABASE_THREADS": "5", "DATABASE_POOL_MAX_SIZE": "4"},
            "CHAT_DATABASE_THREADS=5 is more than the 4 connections of Django's pool per process: "
            "set CHAT_DATABASE_THREADS to at most 4, or DATABASE_POOL_MAX_SIZE to at least 5",
        ),
        (
            {"CHAT_DATABASE_THREADS": "2", "DATABASE_POOL_MAX_SIZE": "0"},
            "CHAT_DATABASE_THREADS=2 needs Django's connection pool, which DATABASE_POOL_MAX_SIZE=0 "
            "turns off: set DATABASE_POOL_MAX_SIZE to at least 2, or CHAT_DATABASE_THREADS=0",
        ),
        ({"CHAT_DATABASE_THREADS": "-1"}, "CHAT_DATABASE_THREADS=-1 is negative: set it to 0"),
        ({"CHAT_POST_BATCH_MAX": "0"}, "CHAT_POST_BATCH_MAX=0: set it to 1 (each post on its own) or more"),
    ],
)
def test_unsafe_configuration_is_refused_with_the_fix_named(stack, overrides, message):
    result = manage(stack, "check", **overrides)
    assert result.returncode != 0
    # The last line names the problem and the fix.
    assert message in result.stderr.splitlines()[-1]


def test_secrets_are_read_from_files(stack, tmp_path):
    key_file = tmp_path / "secret_key"
    key_file.write_text("k" * 30 + "0123456789abcdefghijklmnopqrstuvwxyz\n")
    result = manage(stack, "check", DJANGO_SECRET_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stderr


def test_as_many_database_threads_as_the_pool_has_connections_are_accepted(stack):
    """The bound is inclusive: each thread can hold one of the pool's connections."""
    result = manage(stack, "check", CHAT_DATABASE_THREADS="4", DATABASE_POOL_MAX_SIZE="4")
    assert result.returncode == 0, result.stderr
