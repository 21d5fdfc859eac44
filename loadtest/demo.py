"""python -m loadtest.demo: `make demo`'s proof, on the native stack.

Runs after `python -m native up` and `python -m native.smoke`: the same Locust
scenario (1,000 chat users for 60 s at full load by default) against the shipped
reference configuration, then against `naive`, restarting the app in each
profile in turn. The code path is loadtest/runner.py's, as for `python -m loadtest.prove`; only the
restarts are added.
Writes results/latest/{pooled,naive}/summary.json, report.md and connections.png,
prints the verdict, and exits non-zero unless the reference is bounded with zero
failures. The app is left running in the shipped profile, as `make up` leaves it,
with the demo's pool panel on the chat page (CHAT_SHOW_POOL) in every run and after.
"""

import argparse
import sys
from pathlib import Path

from loadtest.runner import Target, prove
from loadtest.scenario import PROJECT, add_arguments, from_arguments, raise_open_file_limit
from native.layout import StackError
from native.profiles import PROFILES, SHIPPED
from native.stack import Stack

# The chat page shows PostgreSQL's server connections against the bound while the runs go
# on (a demo feature, off by default: app/chat_site/settings.py). It costs nothing unless a
# page is open, and then at most a query a second per Daphne process.
DEMO_SETTINGS = {"CHAT_SHOW_POOL": "true"}


def describe(stack: Stack, profile_name: str) -> str:
    profile = PROFILES[profile_name]
    processes = f"{stack.config.app_workers} Daphne processes"
    if profile_name == SHIPPED.name:
        return (
            f"The reference as shipped: native profile {profile.name} ({profile.summary}); "
            f"{processes}, Redis pub/sub channel layer, app settings at their defaults "
            "(the page's pool panel aside)."
        )
    return f"Native profile {profile.name}: {profile.summary}; {processes}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser, ("users", "hold_s"))
    parser.add_argument(
        "--results", type=Path, default=PROJECT / "results" / "latest", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)

    raise_open_file_limit()
    stack = Stack()
    scenario = from_arguments(args)
    targets = [
        Target("pooled", stack.app_url, describe(stack, SHIPPED.name), config=SHIPPED.name),
        Target("naive", stack.app_url, describe(stack, "naive"), config="naive"),
    ]

    def restart_in_profile(target: Target) -> None:
        stack.restart_app(PROFILES[target.config], DEMO_SETTINGS)

    try:
        stack.up(SHIPPED, DEMO_SETTINGS)  # up after `python -m native up`: the app gets the panel
        return prove(
            targets,
            scenario,
            args.results,
            reference="pooled",
            before_each=restart_in_profile,
            env=stack.monitor_env(),
        )
    except (StackError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        if stack.pid("postgres"):
            stack.restart_app(SHIPPED, DEMO_SETTINGS)


if __name__ == "__main__":
    sys.exit(main())
