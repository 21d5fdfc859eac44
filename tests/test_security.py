"""Tries to get in where the configs say no one may: every attempt must be refused."""

import subprocess

import psycopg
import pytest

from probes.connections import pgbouncer_show


def connect(stack, role, *, through_pgbouncer, dbname="chat", password=None):
    dsn = stack.dsn(role, through_pgbouncer=through_pgbouncer, dbname=dbname)
    if password is not None:
        dsn = dsn.replace(f"password={stack.secret(_secret_of(role))}", f"password={password}")
    return psycopg.connect(dsn, autocommit=True)


def _secret_of(role):
    return {"chat_app": "POSTGRES_APP_PASSWORD", "pgbouncer_stats": "PGBOUNCER_STATS_PASSWORD"}[role]


def test_wrong_password_to_pgbouncer_is_refused(stack):
    with pytest.raises(psycopg.OperationalError, match="SASL authentication failed"):
        connect(stack, "chat_app", through_pgbouncer=True, password="wrong-password-123456")


def test_clients_authenticate_to_pgbouncer_with_scram(stack, pgbouncer_console):
    config = {row["key"]: row["value"] for row in pgbouncer_show(pgbouncer_console, "CONFIG")}
    assert config["auth_type"] == "scram-sha-256"
    assert config["pool_mode"] == "transaction"


def test_app_role_cannot_reach_the_admin_console(stack):
    # Refused at once (connect_timeout=5 in the DSN): with a global auth_user,
    # PgBouncer 1.18 would leave this client waiting forever instead.
    with pytest.raises(psycopg.OperationalError, match=r"SASL authentication failed|not allowed"):
        connect(stack, "chat_app", through_pgbouncer=True, dbname="pgbouncer")


def test_stats_user_cannot_administer_pgbouncer(stack):
    console = connect(stack, "pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer")
    with console, pytest.raises(psycopg.Error, match="admin access needed"):
        console.execute("PAUSE chat")


def test_superuser_cannot_log_in_over_tcp(stack):
    result = subprocess.run(
        ["psql", "-w", "-h", stack.config.host, "-p", str(stack.config.postgres_port), "-U", "postgres",
         "-d", "postgres", "-c", "select 1"],
        capture_output=True, text=True, timeout=10, env={"PGCONNECT_TIMEOUT": "5", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "pg_hba.conf rejects connection" in result.stderr


def test_app_role_cannot_change_the_schema(stack):
    with connect(stack, "chat_app", through_pgbouncer=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE TABLE intruder (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("DROP TABLE chat_message")


def test_app_role_cannot_read_password_verifiers(stack):
    with connect(stack, "chat_app", through_pgbouncer=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT * FROM pgbouncer.user_lookup('chat_app')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT rolpassword FROM pg_authid")


def test_lookup_function_reveals_only_pooled_roles(stack):
    dsn = stack.dsn("pgbouncer_auth", through_pgbouncer=False)
    with psycopg.connect(dsn, autocommit=True) as auth:
        lookup = "SELECT usename, passwd FROM pgbouncer.user_lookup(%s)"
        (usename, verifier), *_ = auth.execute(lookup, ["chat_app"]).fetchall()
        assert usename == "chat_app"
        assert verifier.startswith("SCRAM-SHA-256$")
        for role in ("chat_owner", "chat_monitor", "pgbouncer_auth", "postgres"):
            assert auth.execute(lookup, [role]).fetchall() == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            auth.execute("SELECT count(*) FROM public.chat_message")


def test_owner_and_monitor_roles_cannot_log_in_through_pgbouncer(stack):
    for role in ("chat_owner", "chat_monitor"):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(stack.dsn(role, through_pgbouncer=True), autocommit=True)


def test_no_secret_is_tracked_by_git():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, check=True).stdout.split()
    assert ".env" not in tracked
    assert not [path for path in tracked if path.startswith(".stack")]
