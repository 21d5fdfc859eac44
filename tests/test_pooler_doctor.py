"""`manage.py pooler_doctor` against the running native stack: real PgBouncer, real PostgreSQL.

Each case is a settings module a user could write (pooled_database() plus one change),
run in a fresh process the way a user runs the doctor; the passwords come from a
pgpass file, never the command line or the settings.
"""

import subprocess
import sys

import pytest

from pooled_postgres.observe import pgbouncer_show


@pytest.fixture
def doctor(tmp_path, passfile_dsns):
    """Run the doctor on pooled_database(<the role's DSN>) with some settings changed."""

    def run(*args: str, connect: str = "app", settings: str = "") -> subprocess.CompletedProcess:
        (tmp_path / "doctor_settings.py").write_text(
            "from psycopg.conninfo import conninfo_to_dict\n"
            "from pooled_postgres.config import pooled_database\n"
            "SECRET_KEY = 'only-for-this-test-' + 'x' * 50\n"
            "INSTALLED_APPS = ['pooled_postgres']\n"
            "USE_TZ = True\n"
            f"_dsn = conninfo_to_dict({passfile_dsns[connect]!r})\n"
            "_connection = {name.upper(): _dsn.pop(key) for key, name in "
            "(('dbname', 'name'), ('user', 'user'), ('host', 'host'), ('port', 'port'))}\n"
            "DATABASES = {'default': pooled_database({**_connection, 'OPTIONS': _dsn})}\n"
            f"{settings}\n"
        )
        return subprocess.run(
            [sys.executable, "-m", "django", "pooler_doctor", *args],
            env={
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(tmp_path),
                "PYTHONDONTWRITEBYTECODE": "1",  # each case rewrites the settings module
                "DJANGO_SETTINGS_MODULE": "doctor_settings",
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    run.dsn = passfile_dsns.get
    return run


def test_the_shipped_settings_through_pgbouncer_pass(doctor):
    result = doctor("--monitor-dsn", doctor.dsn("monitor"), "--pgbouncer-dsn", doctor.dsn("console"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line[:5] for line in lines] == ["ok   "] * 5, result.stdout
    assert "a transaction pooler is in front" in lines[0]
    assert "a statement run 12 times across server connections works" in lines[1]
    assert "QuerySet.iterator() read 3000 of 3000 rows" in lines[2]
    assert "no SET is sent on a new connection" in lines[3]
    assert "within the bound 12" in lines[4]


def test_straight_to_postgresql_there_is_no_pooler(doctor):
    result = doctor(connect="owner-direct")
    assert result.returncode == 1
    assert "FAIL no transaction pooler in front" in result.stdout
    assert "fix: point HOST/PORT at PgBouncer" in result.stdout


def test_server_side_cursors_break_iteration(doctor):
    result = doctor(settings="DATABASES['default']['DISABLE_SERVER_SIDE_CURSORS'] = False")
    assert result.returncode == 1
    assert "FAIL QuerySet.iterator() fails: cursor" in result.stdout, result.stdout
    assert "fix: set DISABLE_SERVER_SIDE_CURSORS = True" in result.stdout


def test_prepared_statements_fail_unless_pgbouncer_tracks_them(
    doctor, pgbouncer_console, leaves_prepared_statements
):
    config = {row["key"]: row["value"] for row in pgbouncer_show(pgbouncer_console, "CONFIG")}
    tracked = int(config.get("max_prepared_statements", "0")) > 0
    result = doctor(
        settings="DATABASES['default']['OPTIONS'].update(server_side_binding=True, prepare_threshold=2)"
    )
    if tracked:
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 1
        assert "FAIL a statement run 12 times failed: prepared statement" in result.stdout, result.stdout


def test_a_time_zone_other_than_the_servers_is_set_on_every_connection(doctor):
    result = doctor(settings="USE_TZ = False\nTIME_ZONE = 'Europe/Paris'")
    assert result.returncode == 1
    assert "FAIL every new connection sends SET TIME ZONE 'Europe/Paris' (the server reports 'UTC')" in (
        result.stdout
    )


def test_server_connections_over_the_bound_are_reported(doctor, open_transactions):
    with open_transactions():
        result = doctor("--monitor-dsn", doctor.dsn("monitor"), "--bound", "0")
    assert result.returncode == 1
    assert "FAIL chat_app holds" in result.stdout
    assert "over the bound 0" in result.stdout


def test_a_connection_it_cannot_make_is_one_finding_not_a_traceback(doctor):
    result = doctor(settings="DATABASES['default']['USER'] = 'chat_nobody'")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL cannot connect to DATABASES['default']: "), result.stdout
    assert "fix: check HOST, PORT, USER and the password" in result.stdout
    assert "Traceback" not in result.stderr
