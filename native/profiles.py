"""How the app reaches PostgreSQL: the configurations the demo and the benchmark compare.

The shipped configuration is ``pooled-djangopool``: PgBouncer in transaction mode,
CONN_MAX_AGE=0, and Django's pool in front of PgBouncer. The others are here to
be measured against it; ``naive`` is what popular templates ship.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    through_pgbouncer: bool
    conn_max_age: int
    pool_max_size: int | None  # Django's pool per process; 0 = off, None = the app's default
    summary: str


PROFILES = {
    profile.name: profile
    for profile in (
        Profile(
            "pooled-djangopool",
            True,
            0,
            None,
            "PgBouncer (transaction), CONN_MAX_AGE=0, Django's pool per process (shipped)",
        ),
        Profile("pooled", True, 0, 0, "PgBouncer (transaction), CONN_MAX_AGE=0, no Django pool"),
        Profile("pgbouncer-60", True, 60, 0, "PgBouncer (transaction), CONN_MAX_AGE=60"),
        Profile("direct-0", False, 0, 0, "straight to PostgreSQL, CONN_MAX_AGE=0"),
        Profile("naive", False, 60, 0, "straight to PostgreSQL, CONN_MAX_AGE=60 (common templates)"),
    )
}
SHIPPED = PROFILES["pooled-djangopool"]
