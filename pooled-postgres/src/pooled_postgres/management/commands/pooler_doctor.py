"""manage.py pooler_doctor: check a live deployment through its configured connection.

What settings alone cannot tell: whether a transaction pooler is really in front,
whether a statement run again and again, or QuerySet.iterator(), survive it, whether
Django sends session state on every new connection, and (given a monitoring DSN) how
many server connections the app's role holds against the pooler's bound. One line
per finding, with its fix; the exit status is 1 when any finding is a problem.
"""

import contextlib
from collections.abc import Iterator

import psycopg
from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from pooled_postgres.observe import bound_from_console, first_line, role_connections

ROUNDS = 12  # more than psycopg's prepare_threshold (5): a prepared statement gets reused


class Finding:
    def __init__(self, ok: bool, what: str, fix: str = ""):
        self.ok, self.what, self.fix = ok, what, fix

    def __str__(self) -> str:
        return f"ok   {self.what}" if self.ok else f"FAIL {self.what}\n     fix: {self.fix}"


class Command(BaseCommand):
    help = "Check a live deployment behind a transaction pooler; exit 1 on a problem."
    # The settings' own checks (manage.py check) would stop it before it shows what they
    # lead to on the live deployment: the doctor runs regardless.
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the DATABASES alias to check")
        parser.add_argument(
            "--monitor-dsn",
            help="a PostgreSQL DSN of a role that sees every session (pg_monitor), to count "
            "the server connections the app's role holds",
        )
        parser.add_argument(
            "--pgbouncer-dsn", help="a DSN of PgBouncer's console (a stats user), to read the bound"
        )
        parser.add_argument("--bound", type=int, help="the most server connections the app's role may hold")

    def handle(self, *args, database, monitor_dsn, pgbouncer_dsn, bound, **options):
        wrapper = connections[database]
        params = plain(wrapper.get_connection_params())
        try:
            findings = [
                pooler_in_front(params),
                repeated_statement(wrapper, params),
                chunked_iteration(wrapper, params),
                session_state(wrapper, params),
            ]
        except psycopg.OperationalError as error:  # nothing else can be checked
            what = f"cannot connect to DATABASES[{database!r}]: {first_line(error)}"
            findings = [
                Finding(False, what, "check HOST, PORT, USER and the password (a passfile, or PASSWORD)")
            ]
        if monitor_dsn and findings[0].ok:
            try:
                findings.append(server_connections_within_bound(wrapper, monitor_dsn, pgbouncer_dsn, bound))
            except psycopg.OperationalError as error:
                what = f"cannot connect to the monitor or the console: {first_line(error)}"
                findings.append(Finding(False, what, "check --monitor-dsn and --pgbouncer-dsn"))
        for finding in findings:
            self.stdout.write(str(finding))
        wrapper.close()
        if not all(finding.ok for finding in findings):
            raise SystemExit(1)


def plain(params: dict) -> dict:
    """Django's connection parameters for the doctor's own connections: the same server and
    credentials, without Django's pool or cursor options (it never prepares statements)."""
    django_only = {"cursor_factory", "prepare_threshold", "context"}
    own = {key: value for key, value in params.items() if key not in django_only}
    return own | {"prepare_threshold": None}


def backend_pid(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


@contextlib.contextmanager
def holding_a_server(params: dict) -> Iterator[psycopg.Connection]:
    """A second client that can open a transaction, taking the server connection the pooler
    would hand out next (PgBouncer reuses the most recently used one first)."""
    with psycopg.connect(**params, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def server_taken(holder: psycopg.Connection) -> Iterator[None]:
    with holder.transaction():
        backend_pid(holder)
        yield


def pooler_in_front(params: dict) -> Finding:
    """A transaction pooler hands one client's consecutive transactions to different server
    connections: one client seeing two backend PIDs, or two clients sharing one, proves it."""
    with psycopg.connect(**params, autocommit=True) as client, holding_a_server(params) as holder:
        first = backend_pid(client)
        with holder.transaction():
            held = backend_pid(holder)
            second = backend_pid(client)
    if first != second or held == first:
        return Finding(True, f"a transaction pooler is in front (backend PIDs {first}, {held}, {second})")
    return Finding(
        False,
        f"no transaction pooler in front: this client kept backend {first} while another held {held}",
        "point HOST/PORT at PgBouncer with pool_mode = transaction, CONN_MAX_AGE = 0",
    )


def repeated_statement(wrapper, params: dict) -> Finding:
    """The same statement, ROUNDS times, each time on another server connection if the pooler
    has one: prepared statements (server_side_binding) fail here."""
    try:
        with holding_a_server(params) as holder:
            for round_ in range(ROUNDS):
                elsewhere = server_taken(holder) if round_ % 2 else contextlib.nullcontext()
                with elsewhere, wrapper.cursor() as cursor:
                    cursor.execute("SELECT %s::int + 1", [round_])
                    cursor.fetchone()
    except (DatabaseError, psycopg.Error) as error:
        return Finding(
            False,
            f"a statement run {ROUNDS} times failed: {first_line(error)}",
            "remove OPTIONS['server_side_binding'], or run PgBouncer 1.21+ with max_prepared_statements",
        )
    return Finding(True, f"a statement run {ROUNDS} times across server connections works")


def chunked_iteration(wrapper, params: dict) -> Finding:
    """What QuerySet.iterator() does: fetch a result in chunks, other clients in between."""
    try:
        with holding_a_server(params) as holder:
            # QuerySet.iterator() asks for a server-side cursor unless the entry disables them.
            if wrapper.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
                cursor = wrapper.cursor()
            else:
                cursor = wrapper.chunked_cursor()
            try:
                cursor.execute("SELECT generate_series(1, 3000)")
                rows = 0
                while True:
                    with server_taken(holder):
                        chunk = cursor.fetchmany(1000)
                    if not chunk:
                        break
                    rows += len(chunk)
            finally:
                cursor.close()
    except (DatabaseError, psycopg.Error) as error:
        return Finding(
            False,
            f"QuerySet.iterator() fails: {first_line(error)}",
            "set DISABLE_SERVER_SIDE_CURSORS = True for this database",
        )
    return Finding(rows == 3000, f"QuerySet.iterator() read {rows} of 3000 rows", "report this as a bug")


def session_state(wrapper, params: dict) -> Finding:
    """The SETs Django sends on each new connection: the time zone when the server reports
    another, the role when OPTIONS asks for one (DatabaseWrapper._configure_connection)."""
    with psycopg.connect(**params) as conn:
        server_zone = conn.info.parameter_status("TimeZone")
    sent = []
    if wrapper.timezone_name and server_zone != wrapper.timezone_name:
        sent.append(f"SET TIME ZONE {wrapper.timezone_name!r} (the server reports {server_zone!r})")
    if role := wrapper.settings_dict["OPTIONS"].get("assume_role"):
        sent.append(f"SET ROLE {role}")
    if not sent:
        return Finding(True, "no SET is sent on a new connection")
    return Finding(
        False,
        f"every new connection sends {' and '.join(sent)}",
        "USE_TZ = True with PostgreSQL's timezone = 'UTC'; roles set with ALTER ROLE, not assume_role",
    )


def server_connections_within_bound(wrapper, monitor_dsn: str, pgbouncer_dsn: str | None, bound: int | None):
    role, database = wrapper.settings_dict["USER"], wrapper.settings_dict["NAME"]
    if bound is None and pgbouncer_dsn:
        with psycopg.connect(pgbouncer_dsn, autocommit=True) as console:
            bound = bound_from_console(console)
    with psycopg.connect(monitor_dsn, autocommit=True) as monitor:
        held = role_connections(monitor, database, role)
    holds = f"{role} holds {held} server connections to {database}"
    if bound is None:
        return Finding(True, f"{holds} (no bound given)")
    if held <= bound:
        return Finding(True, f"{holds}, within the bound {bound}")
    return Finding(
        False,
        f"{holds}, over the bound {bound}",
        "find what connects around the pooler (CONN_MAX_AGE > 0, a direct HOST), or size the bound",
    )
