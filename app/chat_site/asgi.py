"""ASGI entry point served by Daphne: HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_site.settings")
django_asgi_app = get_asgi_application()  # set up Django before importing consumers

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chat import pool_metrics  # noqa: E402
from chat.metrics import HANDSHAKES_REFUSED  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402


class CountingOriginValidator(OriginValidator):
    """Channels' origin check, each refusal counted (reason "origin")."""

    def valid_origin(self, parsed_origin):
        valid = super().valid_origin(parsed_origin)
        if not valid:
            HANDSHAKES_REFUSED.labels(reason="origin").inc()
        return valid


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Refuses a handshake whose Origin is missing or not in ALLOWED_HOSTS (HTTP 403),
        # so another site's page cannot open a socket with the visitor's cookies. This is
        # Channels' AllowedHostsOriginValidator, which differs only where ALLOWED_HOSTS is
        # empty, and settings.py refuses to start then.
        "websocket": CountingOriginValidator(URLRouter(websocket_urlpatterns), settings.ALLOWED_HOSTS),
    }
)

# Daphne imports this module once per process: one pool sampler each.
pool_metrics.start_sampling()
