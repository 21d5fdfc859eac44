"""A room named `lobby` on every database, so that a fresh stack opens on a room.

Without it the page of a new stack offers an empty room list and nothing to chat
in; the page joins `lobby` when the address names no room. Created only when
missing: an existing `lobby` keeps its title and its messages. Backwards this
does nothing: the room may hold messages by then, and a migration never deletes
user data.
"""

from django.db import migrations

SLUG = "lobby"
TITLE = "Lobby"


def create_lobby(apps, schema_editor):
    Room = apps.get_model("chat", "Room")
    Room.objects.using(schema_editor.connection.alias).get_or_create(slug=SLUG, defaults={"title": TITLE})


class Migration(migrations.Migration):
    dependencies = [("chat", "0002_message_client_id_once")]

    operations = [migrations.RunPython(create_lobby, reverse_code=migrations.RunPython.noop)]
