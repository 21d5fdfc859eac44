from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    # The tests run this project on the same database as the repository's own `chat`
    # app; a label of its own keeps their tables and migrations apart.
    label = "tutorial_chat"
