"""Wait, with a limit, until a database alias accepts a query."""

import time

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connections


class Command(BaseCommand):
    help = "Wait until the database answers SELECT 1, or fail after --timeout seconds."

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default")
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args, database, timeout, **options):
        connection = connections[database]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                return
            except DatabaseError as exc:
                connection.close()
                if time.monotonic() >= deadline:
                    settings = connection.settings_dict
                    raise CommandError(
                        f"database {database!r} at {settings['HOST']}:{settings['PORT']} did not "
                        f"answer within {timeout:g}s: {exc}".strip()
                    ) from None
                time.sleep(1)
