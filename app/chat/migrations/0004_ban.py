"""The ban list that CHAT_MESSAGE_CHECKS reads before storing a message (chat/store.py).

A new, empty table: safe on a populated database that the app keeps writing to. Its
foreign key takes a brief SHARE ROW EXCLUSIVE lock on chat_room (which blocks room
changes, not reads or message inserts) and has no row to check.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0003_lobby_room"),
    ]

    operations = [
        migrations.CreateModel(
            name="Ban",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("author", models.CharField(max_length=40)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "room",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="bans", to="chat.room"
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("room", "author"), name="ban_room_author_once")
                ],
            },
        ),
    ]
