"""PostgreSQL's connection budget across hosts: every PgBouncer's pool adds up at PostgreSQL.

    sum over PgBouncers of max_db_connections  +  direct logins
        <=  max_connections - superuser_reserved_connections

With this repository's files: max_connections 100, superuser_reserved_connections 3
(postgres/postgresql.conf), max_db_connections 15 per PgBouncer (pgbouncer/pgbouncer.ini:
the app's pool of default_pool_size 10 + reserve_pool_size 2, plus auth_user's lookups
and the health checks), and 3 direct logins (DIRECT_LOGINS below):

    per-node PgBouncer, 3 app nodes:  3 x 15 + 3 = 48 <= 97   (room for 6 nodes: 6 x 15 + 3 = 93)
    one central PgBouncer:            1 x 15 + 3 = 18 <= 97   (whatever the number of app nodes)

The app role's own bound, which the load test's gate holds, is the pool per PgBouncer
(pooled_postgres' bound_from_ini: 12) times the PgBouncers: 36 per-node on 3 nodes, 12 central.
Nothing here counts users or Daphne processes: they are PgBouncer's clients, not PostgreSQL's.
"""

import configparser
from dataclasses import dataclass
from pathlib import Path

from pooled_postgres.observe import bound_from_ini

PROJECT = Path(__file__).resolve().parent.parent
PGBOUNCER_INI = PROJECT / "pgbouncer" / "pgbouncer.ini"
POSTGRESQL_CONF = PROJECT / "postgres" / "postgresql.conf"

# Logins that reach PostgreSQL past every PgBouncer, and so count outside the pools:
# the migration job (chat_owner, DDL never goes through a transaction pooler), the
# PostgreSQL exporter and the load test's monitor (chat_monitor, pg_stat_activity).
# The superuser's maintenance logins have superuser_reserved_connections of their own.
DIRECT_LOGINS = {"migrate job (chat_owner)": 1, "postgres-exporter (chat_monitor)": 1, "load test monitor": 1}
TOPOLOGIES = ("per-node", "central")
# The one this repository recommends, from what `make swarm-test` measured (swarm/README.md):
# its bound does not grow with nodes, and a rolling deploy or a lost node never changes it.
SHIPPED_TOPOLOGY = "central"


@dataclass(frozen=True)
class Budget:
    pgbouncers: int
    per_pgbouncer: int  # max_db_connections: everything one PgBouncer may open to PostgreSQL
    direct: int  # DIRECT_LOGINS
    available: int  # max_connections - superuser_reserved_connections
    app_role_per_pgbouncer: int  # the app role's pool: default_pool_size + reserve_pool_size, capped

    @property
    def needed(self) -> int:
        return self.pgbouncers * self.per_pgbouncer + self.direct

    @property
    def app_role_bound(self) -> int:
        """Most server connections of the app role PostgreSQL may see: the gate's bound."""
        return self.pgbouncers * self.app_role_per_pgbouncer

    def formula(self) -> str:
        fits = "<=" if self.needed <= self.available else ">"
        return (
            f"{self.pgbouncers} PgBouncer(s) x max_db_connections {self.per_pgbouncer} "
            f"+ {self.direct} direct = {self.needed} {fits} {self.available} "
            "(max_connections - superuser_reserved_connections - reserved_connections); "
            f"app role bound {self.pgbouncers} x {self.app_role_per_pgbouncer} = {self.app_role_bound}"
        )


def pgbouncer_count(topology: str, app_nodes: int) -> int:
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {topology!r}")
    return app_nodes if topology == "per-node" else 1


def budget(topology: str, app_nodes: int, ini: Path = PGBOUNCER_INI, conf: Path = POSTGRESQL_CONF) -> Budget:
    settings = postgresql_settings(conf)
    max_db_connections = pgbouncer_setting(ini, "max_db_connections")
    if max_db_connections <= 0:
        # Unset (0) means unlimited: nothing would cap what one PgBouncer opens, so no sum holds.
        raise ValueError(f"{ini}: set max_db_connections, or no budget across PgBouncers can hold")
    return Budget(
        pgbouncers=pgbouncer_count(topology, app_nodes),
        per_pgbouncer=max_db_connections,
        direct=sum(DIRECT_LOGINS.values()),
        # reserved_connections (PostgreSQL 16+): kept for roles with pg_use_reserved_connections.
        available=settings["max_connections"]
        - settings["superuser_reserved_connections"]
        - settings["reserved_connections"],
        app_role_per_pgbouncer=bound_from_ini(ini),
    )


def check(topology: str, app_nodes: int) -> Budget:
    """The budget of the topology, or ValueError naming the formula it breaks."""
    found = budget(topology, app_nodes)
    if found.needed > found.available:
        raise ValueError(
            f"the {topology} topology on {app_nodes} app node(s) does not fit PostgreSQL: "
            f"{found.formula()}. Use one central PgBouncer, lower default_pool_size / "
            "max_db_connections, or raise max_connections"
        )
    return found


def pgbouncer_setting(ini: Path, name: str) -> int:
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";",), comment_prefixes=(";", "#", "%"), interpolation=None
    )
    parser.read_string(ini.read_text(), source=str(ini))
    return int(parser["pgbouncer"].get(name, "0"))


def postgresql_settings(conf: Path) -> dict[str, int]:
    """max_connections and the slots kept from ordinary roles, PostgreSQL's defaults where unset."""
    settings = {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0}
    for line in conf.read_text().splitlines():
        name, equals, value = line.split("#", 1)[0].partition("=")
        if equals and name.strip() in settings:
            settings[name.strip()] = int(value.strip().strip("'"))
    return settings
