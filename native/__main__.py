"""python -m native up|down|destroy|status|env|monitor-env: the stack as local processes."""

import argparse
import shlex
import sys

from native.layout import StackError
from native.profiles import PROFILES, SHIPPED
from native.stack import Stack, profile_named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m native", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start PostgreSQL, PgBouncer, Redis and Daphne; wait until ready")
    up.add_argument(
        "--profile",
        default=SHIPPED.name,
        choices=PROFILES,
        help=f"how the app reaches PostgreSQL (default {SHIPPED.name})",
    )
    up.add_argument(
        "--monitoring",
        action="store_true",
        help="also Prometheus and the PgBouncer and PostgreSQL exporters (make monitoring)",
    )
    commands.add_parser("down", help="stop every process the stack started")
    commands.add_parser("destroy", help="stop, then delete the state directory (data, secrets)")
    commands.add_parser("status", help="show which services run, with their PIDs")
    commands.add_parser("env", help="print the app's environment as shell exports (for manage.py)")
    commands.add_parser(
        "monitor-env", help="print the load test monitor's DSNs as shell exports (for locust by hand)"
    )
    args = parser.parse_args(argv)

    stack = Stack()
    try:
        if args.command == "up":
            profile = profile_named(args.profile)
            print(f"starting the stack in {stack.dir} ({profile.name}: {profile.summary})", flush=True)
            stack.up(profile, monitoring=args.monitoring)
            print(f"ready: {stack.app_url}/  (health: {stack.app_url}/healthz, logs: {stack.path('logs')})")
            if args.monitoring:
                # Debian's Prometheus reads its own web pages from /usr/share/prometheus, which
                # its binary alone, unpacked elsewhere, lacks: the API answers, the classic UI not.
                print(f"dashboard: {stack.prometheus_url}/consoles/chat.html")
                print(f"targets:   {stack.prometheus_url}/api/v1/targets")
        elif args.command == "down":
            stack.down()
            print("stopped")
        elif args.command == "destroy":
            stack.destroy()
            print(f"stopped, and deleted {stack.dir}")
        elif args.command == "status":
            for name, pid in stack.status().items():
                print(f"{name:18} {'running, pid ' + str(pid) if pid else 'stopped'}")
            if (running := stack.running_profile()) is not None:
                print(f"app profile: {running}")
        elif args.command == "env":
            profile, extra_env = stack.running_app() or (SHIPPED, {})
            for key, value in stack.app_env(profile, extra_env).items():
                print(f"export {key}={shlex.quote(value)}")
        elif args.command == "monitor-env":
            for key, value in stack.monitor_env().items():
                print(f"export {key}={shlex.quote(value)}")
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        stack.down()
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
