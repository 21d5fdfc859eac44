"""TLS on every internal hop of the native stack, tried as an intruder would.

The app and the monitor reach PgBouncer, PgBouncer and the migration job reach
PostgreSQL, the app reaches Redis: each over TLS, the server's certificate checked
against the stack's private CA and its name (verify-full). A plaintext client is
refused on each hop, and so is a client that trusts another CA, or a server whose
name is not the one on its certificate.
"""

import subprocess

import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

HOPS = {"pgbouncer": ("chat_app", True), "postgres": ("chat_monitor", False)}


def dsn(stack, hop: str, **changes) -> str:
    role, through_pgbouncer = HOPS[hop]
    return make_conninfo(stack.dsn(role, through_pgbouncer=through_pgbouncer), **changes)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory):
    """A CA's certificate that is not the stack's: a client trusting it only must be refused."""
    directory = tmp_path_factory.mktemp("other-ca")
    key, cert = directory / "ca.key", directory / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=someone else's CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


def test_plaintext_to_pgbouncer_is_refused(stack):
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        psycopg.connect(dsn(stack, "pgbouncer", sslmode="disable"))


def test_plaintext_to_postgresql_is_refused(stack):
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba.conf rejects connection .* no encryption"):
        psycopg.connect(dsn(stack, "postgres", sslmode="disable"))


def redis_client(stack, **tls) -> redis.Redis:
    return redis.Redis(
        host=stack.config.host,
        port=stack.config.redis_port,
        username="chat",
        password=stack.secret("REDIS_PASSWORD"),
        socket_timeout=5,
        **tls,
    )


def test_plaintext_to_redis_is_refused(stack):
    client = redis_client(stack)  # the right password, but no TLS
    with pytest.raises(redis.ConnectionError):
        client.ping()


@pytest.mark.parametrize("hop", list(HOPS))
def test_a_client_that_trusts_another_ca_is_refused_by_pgbouncer_and_postgresql(stack, other_ca, hop):
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dsn(stack, hop, sslrootcert=str(other_ca)))


def test_a_client_that_trusts_another_ca_is_refused_by_redis(stack, other_ca):
    client = redis_client(stack, ssl=True, ssl_ca_certs=str(other_ca))
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()


@pytest.mark.parametrize("hop", list(HOPS))
def test_a_server_whose_certificate_names_another_host_is_refused(stack, hop):
    # The right address and CA, but the client asked for another host name:
    # verify-full checks the name too, so a stolen certificate for one host
    # cannot stand in for another.
    address = conninfo_to_dict(stack.dsn(HOPS[hop][0], through_pgbouncer=HOPS[hop][1]))["host"]
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(dsn(stack, hop, host="elsewhere.example", hostaddr=address))


def test_every_connection_the_stack_makes_is_encrypted(stack, room, pgbouncer_console, monitor_db):
    from pooled_postgres.observe import pgbouncer_show
    from probes.chat import ChatSocket

    socket = ChatSocket(stack.app_url, room, "encrypted")
    assert socket.post("over TLS all the way", "tls-1")["type"] == "ack"
    socket.close()
    app_clients = [row for row in pgbouncer_show(pgbouncer_console, "CLIENTS") if row["user"] == "chat_app"]
    assert app_clients, "the app holds no connection to PgBouncer"
    assert all(row["tls"] for row in app_clients), app_clients  # e.g. TLSv1.3/TLS_AES_256_GCM_SHA384
    backends = monitor_db.execute(
        "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
        "WHERE a.datname = 'chat' AND a.backend_type = 'client backend'"
    ).fetchall()
    assert {role for role, _ in backends} >= {"chat_app", "chat_monitor"}
    assert all(encrypted for _, encrypted in backends), backends
