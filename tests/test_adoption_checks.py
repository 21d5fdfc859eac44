"""pooled_postgres' system checks, run by `manage.py check` on settings a user could write.

Each case is a settings module of its own, checked in a fresh process the way a user
runs `python -m django check`: no server is needed, checks read settings only.
"""

import subprocess
import sys

import pytest

from pooled_postgres.config import pooled_database

CONNECTION = {"NAME": "chat", "USER": "chat_app", "HOST": "pgbouncer.internal", "PORT": "6432"}
PLAIN = {**CONNECTION, "ENGINE": "django.db.backends.postgresql"}


def check(tmp_path, *, databases: dict, deploy: bool = False, **settings) -> subprocess.CompletedProcess:
    """`python -m django check` on a settings module with these DATABASES and settings."""
    lines = [
        "SECRET_KEY = 'a-test-key-that-is-long-enough-for-djangos-own-deploy-checks-0123456789'",
        "INSTALLED_APPS = ['pooled_postgres']",
        "USE_TZ = True",
        f"DATABASES = {databases!r}",
        *(f"{name} = {value!r}" for name, value in settings.items()),
    ]
    (tmp_path / "case_settings.py").write_text("\n".join(lines))
    return subprocess.run(
        [sys.executable, "-m", "django", "check", *(["--deploy"] if deploy else [])],
        # No .pyc: two cases written within a second, of one size, would share a stale one.
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(tmp_path),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DJANGO_SETTINGS_MODULE": "case_settings",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_shipped_helper_passes_every_check(tmp_path):
    result = check(
        tmp_path,
        databases={"default": pooled_database(CONNECTION, pooler_max_client_conn=1000)},
        ASGI_APPLICATION="project.asgi.application",
        ASGI_PROCESSES=4,
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_persistent_connections_under_asgi_are_the_leak(tmp_path):
    result = check(
        tmp_path,
        databases={"default": {**PLAIN, "CONN_MAX_AGE": 60}},
        ASGI_APPLICATION="project.asgi.application",
    )
    assert result.returncode == 1
    assert "pooled_postgres.E001" in result.stderr
    assert "CONN_MAX_AGE=60" in result.stderr
    assert "Set CONN_MAX_AGE to 0" in result.stderr  # the hint names the fix
    assert "docs.djangoproject.com" in result.stderr


def test_persistent_connections_without_asgi_are_left_alone(tmp_path):
    """Under WSGI a worker thread lives as long as its connection: no leak to report."""
    result = check(tmp_path, databases={"default": {**PLAIN, "CONN_MAX_AGE": 60}})
    assert result.returncode == 0, result.stderr


def test_unlimited_persistent_connections_count_too(tmp_path):
    result = check(
        tmp_path,
        databases={"default": {**PLAIN, "CONN_MAX_AGE": None}},
        ASGI_APPLICATION="project.asgi.application",
    )
    assert "pooled_postgres.E001" in result.stderr


@pytest.mark.parametrize(
    ("change", "check_id", "level"),
    [
        ({"DISABLE_SERVER_SIDE_CURSORS": False}, "pooled_postgres.E002", "ERRORS"),
        ({"OPTIONS": {"server_side_binding": True}}, "pooled_postgres.E003", "ERRORS"),
        ({"ATOMIC_REQUESTS": True}, "pooled_postgres.W004", "WARNINGS"),
        ({"OPTIONS": {"options": "-c statement_timeout=5s"}}, "pooled_postgres.E005", "ERRORS"),
        ({"OPTIONS": {"assume_role": "chat_owner"}}, "pooled_postgres.E005", "ERRORS"),
        ({"TIME_ZONE": "Europe/Paris"}, "pooled_postgres.W006", "WARNINGS"),
    ],
)
def test_settings_that_break_behind_a_transaction_pooler_are_named(tmp_path, change, check_id, level):
    database = pooled_database(CONNECTION)
    database.update({key: value for key, value in change.items() if key != "OPTIONS"})
    database["OPTIONS"].update(change.get("OPTIONS", {}))
    result = check(tmp_path, databases={"default": database})
    assert f"{check_id}" in result.stderr, result.stderr
    assert level in result.stderr
    assert result.returncode == (1 if level == "ERRORS" else 0)
    assert "HINT" in result.stderr


def test_the_same_settings_without_a_declared_pooler_are_not_judged(tmp_path):
    """Nothing is guessed from a host or a port: only a declared pooler gets the pooler checks."""
    database = pooled_database(CONNECTION)
    database.pop("POOLER")
    database.update(DISABLE_SERVER_SIDE_CURSORS=False, ATOMIC_REQUESTS=True)
    assert check(tmp_path, databases={"default": database}).returncode == 0


def test_a_server_time_zone_declared_as_django_wants_it_is_fine(tmp_path):
    database = pooled_database(CONNECTION)
    database["POOLER"]["SERVER_TIME_ZONE"] = "Europe/Paris"
    result = check(tmp_path, databases={"default": database}, USE_TZ=False, TIME_ZONE="Europe/Paris")
    assert result.returncode == 0, result.stderr


def test_pools_of_every_process_must_fit_what_the_pooler_accepts(tmp_path):
    database = pooled_database(CONNECTION, pool_max_size=10, pooler_max_client_conn=100)
    fits = check(tmp_path, databases={"default": database}, ASGI_PROCESSES=10)
    assert fits.returncode == 0, fits.stderr
    too_many = check(tmp_path, databases={"default": database}, ASGI_PROCESSES=11)
    assert too_many.returncode == 1
    assert "pooled_postgres.E007" in too_many.stderr
    assert "up to 110 client connections" in too_many.stderr


def test_in_memory_channel_layer_with_several_processes(tmp_path):
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    databases = {"default": pooled_database(CONNECTION)}
    one = check(tmp_path, databases=databases, CHANNEL_LAYERS=layers, ASGI_PROCESSES=1)
    assert one.returncode == 0, one.stderr
    several = check(tmp_path, databases=databases, CHANNEL_LAYERS=layers, ASGI_PROCESSES=2)
    assert several.returncode == 1
    assert "pooled_postgres.E008" in several.stderr


def test_deploy_checks_run_them_too(tmp_path):
    result = check(
        tmp_path,
        databases={"default": {**PLAIN, "CONN_MAX_AGE": 60}},
        deploy=True,
        ASGI_APPLICATION="project.asgi.application",
    )
    assert "pooled_postgres.E001" in result.stderr


def test_the_helper_refuses_an_unknown_health_check():
    with pytest.raises(ValueError, match="health_check must be one of socket, query"):
        pooled_database(CONNECTION, health_check="ping")
