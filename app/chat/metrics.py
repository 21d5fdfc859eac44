"""What the WebSocket consumer counts, as Prometheus metrics (README, "App metrics").

Under supervisord (app/entrypoint.sh serve) PROMETHEUS_MULTIPROC_DIR is set:
prometheus_client then keeps each Daphne process's values in files there, named by
its pid, and the metrics program (chat_site/metrics_server.py) adds them up. An
update is a write to a memory-mapped file, a few microseconds: cheap enough for
once per message.
"""

from prometheus_client import Counter, Gauge, Histogram

# liveall: one series per live process (label pid); a dead process's series is
# removed (chat_site/metrics_server.py), since its sockets died with it.
WEBSOCKETS_OPEN = Gauge(
    "chat_websockets_open",
    "WebSockets accepted and not yet disconnected, per Daphne process",
    multiprocess_mode="liveall",
)
MESSAGES_ACKNOWLEDGED = Counter(
    "chat_messages_acknowledged",
    "Messages stored and acknowledged (an ack answering a resend of a stored message is not counted again)",
)
ERRORS = Counter("chat_errors", "Error frames sent, by the protocol's error code", ["code"])
HANDSHAKES_REFUSED = Counter(
    "chat_handshakes_refused",
    "WebSocket handshakes refused (origin: HTTP 403) or closed at connect (the error's code), by reason",
    ["reason"],
)
POSTS_WAITING = Gauge(
    "chat_posts_waiting",
    "Posts waiting for a database call to store them (chat/posting.py), per Daphne process",
    multiprocess_mode="liveall",
)
POST_BATCH_SIZE = Histogram(
    "chat_post_batch_size",
    "Posts stored by one database call",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
PUBLISH_BATCH_SIZE = Histogram(
    "chat_publish_batch_size",
    "Broadcasts published to Redis by one round trip (chat/layer.py)",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200),
)
