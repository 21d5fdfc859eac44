"""Tries to get in where the configs say no one may: every attempt must be refused."""

import getpass
import subprocess
from pathlib import Path

import psycopg
import pytest
import redis

from pooled_postgres.observe import pgbouncer_show


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


def test_clients_authenticate_to_pgbouncer_with_scram_over_tls_from_where_they_belong(
    stack, pgbouncer_console
):
    config = {row["key"]: row["value"] for row in pgbouncer_show(pgbouncer_console, "CONFIG")}
    assert config["auth_type"] == "hba"
    assert config["pool_mode"] == "transaction"
    assert config["client_tls_sslmode"] == "require"
    assert config["server_tls_sslmode"] == "verify-full"
    rules = [line.split() for line in Path(config["auth_hba_file"]).read_text().splitlines()]
    rules = [rule for rule in rules if rule and not rule[0].startswith("#")]
    assert rules, "no rule in PgBouncer's hba file"
    assert {rule[0] for rule in rules} == {"hostssl"}
    assert {rule[-1] for rule in rules} == {"scram-sha-256"}


def test_app_role_cannot_reach_the_admin_console(stack):
    # Refused at once by PgBouncer's hba file (connect_timeout=5 in the DSN): with a
    # global auth_user, PgBouncer 1.18 would leave this client waiting forever instead.
    with pytest.raises(psycopg.OperationalError, match=r"login rejected"):
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


def superuser_sql(stack, sql: str) -> str:
    """SQL as the cluster's superuser, over the Unix socket (peer authentication), as the
    OS user that runs PostgreSQL: no network login can do this (pg_hba.conf)."""
    user = stack.service_user
    result = subprocess.run(
        ["psql", "--no-psqlrc", "--quiet", "--tuples-only", "--set=ON_ERROR_STOP=1",
         "--host", str(stack.path("run", "postgres")), "--port", str(stack.config.postgres_port),
         "--username", user.pw_name if user else getpass.getuser(), "--dbname", "chat", "--command", sql],
        capture_output=True, text=True, timeout=30, check=False, cwd=stack.dir,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("power", ["SUPERUSER", "REPLICATION", "BYPASSRLS", "CREATEROLE"])
def test_lookup_function_reveals_no_verifier_of_a_role_with_more_power_than_the_app(stack, power):
    role = f"mighty_{power.lower()}"
    superuser_sql(
        stack,
        f"CREATE ROLE {role} LOGIN {power} PASSWORD 'a-password-nobody-uses-0123' IN ROLE pooled_login",
    )
    try:
        with psycopg.connect(stack.dsn("pgbouncer_auth", through_pgbouncer=False), autocommit=True) as auth:
            rows = auth.execute("SELECT * FROM pgbouncer.user_lookup(%s)", [role]).fetchall()
        assert rows == []
    finally:
        superuser_sql(stack, f"DROP ROLE {role}")


def test_lookup_function_resolves_names_in_the_catalog_only(stack):
    config = superuser_sql(stack, "SELECT proconfig FROM pg_proc WHERE proname = 'user_lookup'")
    assert config == '{"search_path=pg_catalog, pg_temp"}'


def redis_as(stack, username=None, password=None) -> redis.Redis:
    return redis.Redis(
        host=stack.config.host,
        port=stack.config.redis_port,
        username=username,
        password=password,
        ssl=True,
        ssl_ca_certs=str(stack.ca_file),
        socket_timeout=5,
    )


def test_redis_answers_no_one_who_has_not_logged_in(stack):
    with pytest.raises(redis.AuthenticationError):
        redis_as(stack).get("asgi:anything")


def test_redis_default_user_is_off(stack):
    with pytest.raises(redis.AuthenticationError):
        redis_as(stack, "default", stack.secret("REDIS_PASSWORD")).ping()


def test_the_channel_layer_user_may_only_do_what_the_layer_does(stack):
    chat = redis_as(stack, "chat", stack.secret("REDIS_PASSWORD"))
    assert chat.ping()
    assert chat.zadd("asgi:acl-test", {"member": 1}) == 1  # its own keys, its own commands
    chat.delete("asgi:acl-test")
    for forbidden in (
        lambda: chat.get("asgi:acl-test"),  # a command channels_redis never sends
        lambda: chat.zadd("elsewhere", {"member": 1}),  # a key outside its prefix
        lambda: chat.flushall(),
        lambda: chat.config_get("*"),
        lambda: chat.keys("*"),
        lambda: chat.publish("elsewhere", "hello"),  # a channel outside its prefix
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_the_health_user_may_only_ping(stack):
    health = redis_as(stack, "health", "anything")
    assert health.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        health.zadd("asgi:acl-test", {"member": 1})
