"""client_id becomes an idempotency key: at most one message per (room, client_id) when it is given.

Written for a populated table that the app keeps writing to:

1. Rows that already share a (room, client_id) would make the unique index fail.
   No message is deleted: every row after the first of its pair keeps its text
   and author and loses only its client_id, which is what a message sent without
   one looks like. The first row keeps it, so a resend is answered with the id the
   client was most likely acknowledged with.
2. A failed earlier run of this migration can leave an INVALID index behind (a
   duplicate written between step 1 and step 3 by app code that predates this
   migration, or a cancelled build). IF NOT EXISTS would keep it, yet it may miss
   rows and ON CONFLICT cannot use it as its arbiter, so it is dropped first. Every
   step can run again: after such a failure, run `migrate` again.
3. The index is built CONCURRENTLY, which does not block inserts while it scans
   the table; it cannot run in a transaction, hence ``atomic = False``. Django's
   AddIndexConcurrently would not need 'django.contrib.postgres' in INSTALLED_APPS,
   but it adds an Index, and a partial unique index is a UniqueConstraint in
   Django's model state (Message.Meta.constraints): so RunSQL, with the
   constraint as its state operation.
"""

from django.db import migrations, models

INDEX = "message_room_client_id_once"

BLANK_LATER_DUPLICATES = """
UPDATE chat_message SET client_id = ''
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY room_id, client_id ORDER BY id) AS nth
        FROM chat_message
        WHERE client_id <> ''
    ) AS numbered
    WHERE nth > 1
)
"""

CREATE_INDEX = f"""
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {INDEX}
ON chat_message (room_id, client_id)
WHERE client_id <> ''
"""

DROP_INDEX = f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}"


def drop_an_invalid_leftover(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", [INDEX])
        row = cursor.fetchone()
    if row is not None and not row[0]:
        schema_editor.execute(DROP_INDEX)


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY refuses to run in a transaction

    dependencies = [("chat", "0001_initial")]

    operations = [
        # Backwards there is nothing to undo: the blanked client_ids are not recorded.
        migrations.RunSQL(BLANK_LATER_DUPLICATES, reverse_sql=migrations.RunSQL.noop),
        migrations.RunPython(drop_an_invalid_leftover, reverse_code=migrations.RunPython.noop),
        migrations.RunSQL(
            CREATE_INDEX,
            reverse_sql=DROP_INDEX,
            state_operations=[
                migrations.AddConstraint(
                    model_name="message",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("client_id", ""), _negated=True),
                        fields=("room", "client_id"),
                        name=INDEX,
                    ),
                ),
            ],
        ),
    ]
