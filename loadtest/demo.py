"""python -m loadtest.demo: `make demo`'s proof, on the native stack.

Runs after `python -m native up` and `python -m native.smoke`: the same Locust
scenario (1,000 chat users for 60 s at full load by default) against the shipped
reference configuration, then against `naive`, restarting the app in each
profile in turn. The code path is loadtest.prove's; only the restarts are added.
Writes results/latest/{pooled,naive}/summary.json, report.md and connections.png,
prints the verdict, and exits non-zero unless the reference is bounded with zero
failures. The app is left running in the shipped profile, as `make up` leaves it.
"""

import argparse
import sys
import time
from pathlib import Path

import psycopg

from loadtest.observe import APP_DATABASE, app_pool, pool_server_connections
from loadtest.prove import Target, prove
from loadtest.scenario import PROJECT, Scenario, raise_open_file_limit
from native.profiles import PROFILES, SHIPPED, Profile
from native.stack import Stack, StackError


def restart_clean(stack: Stack, profile: Profile) -> None:
    """Restart the app in a profile, with PgBouncer's server connections closed in between.

    PgBouncer keeps idle server connections for server_idle_timeout (10 minutes): left
    from the previous configuration, they would count in the next one's peak.
    """
    stack.stop("app")
    admin_dsn = stack.dsn("pgbouncer_admin", through_pgbouncer=True, dbname="pgbouncer")
    with psycopg.connect(admin_dsn, autocommit=True, prepare_threshold=None) as admin:
        admin.execute(f"RECONNECT {APP_DATABASE}", prepare=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pool_server_connections(app_pool(admin)) == 0:
                break
            time.sleep(0.2)
    stack.restart_app(profile)


def describe(stack: Stack, profile_name: str) -> str:
    profile = PROFILES[profile_name]
    processes = f"{stack.config.app_workers} Daphne processes"
    if profile_name == SHIPPED.name:
        return (
            f"The reference as shipped: native profile {profile.name} ({profile.summary}); "
            f"{processes}, Redis pub/sub channel layer, app settings at their defaults."
        )
    return f"Native profile {profile.name}: {profile.summary}; {processes}."


def monitor_env(stack: Stack) -> dict[str, str]:
    return {
        "MONITOR_POSTGRES_DSN": stack.dsn("chat_monitor", through_pgbouncer=False),
        "MONITOR_PGBOUNCER_DSN": stack.dsn("pgbouncer_stats", through_pgbouncer=True, dbname="pgbouncer"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=Scenario.users, help="(default %(default)s)")
    parser.add_argument(
        "--duration", type=float, default=Scenario.hold_s, help="seconds at full load (%(default)s)"
    )
    parser.add_argument(
        "--results", type=Path, default=PROJECT / "results" / "latest", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)

    raise_open_file_limit()
    stack = Stack()
    scenario = Scenario(users=args.users, hold_s=args.duration)
    targets = [
        Target("pooled", stack.app_url, describe(stack, SHIPPED.name), config=SHIPPED.name),
        Target("naive", stack.app_url, describe(stack, "naive"), config="naive"),
    ]

    def restart_in_profile(target: Target) -> None:
        restart_clean(stack, PROFILES[target.config])

    try:
        stack.up(SHIPPED)  # already up after `python -m native up`: this only checks
        return prove(
            targets,
            scenario,
            args.results,
            reference="pooled",
            before_each=restart_in_profile,
            env=monitor_env(stack),
        )
    except (StackError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if stack.pid("postgres"):
            stack.restart_app(SHIPPED)


if __name__ == "__main__":
    sys.exit(main())
