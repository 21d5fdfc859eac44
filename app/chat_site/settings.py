"""Settings for the chat app, read from the environment.

Every variable may instead be given as a file with the ``_FILE`` suffix
(``DJANGO_SECRET_KEY_FILE=/run/secrets/django_secret_key``), which is how
Docker and systemd hand secrets over. Production is the default: DEBUG off,
HTTPS-only cookies, no placeholder secrets.
"""

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from chat_site.secrets import require_secret
from pooled_postgres.config import HEALTH_CHECK_ENGINES, pooled_database
from pooled_postgres.observe import bound_from_ini

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.FileAwareEnv()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = require_secret(env, "DJANGO_SECRET_KEY", min_length=50)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=[])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is not set: list the host names clients use, "
        "e.g. DJANGO_ALLOWED_HOSTS=chat.example.com"
    )

INSTALLED_APPS = ["channels", "chat", "pooled_postgres"]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chat.csp.DefaultPolicyMiddleware",
]

ROOT_URLCONF = "chat_site.urls"
ASGI_APPLICATION = "chat_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]

USE_TZ = True
TIME_ZONE = "UTC"  # matches postgresql.conf: Django then never sends SET TIME ZONE
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- HTTPS -------------------------------------------------------------------
# On by default. Turn off only where the app is reached over plain HTTP on
# purpose (the loopback demo); in production terminate TLS in front of Daphne
# (Compose: the `proxy` service, proxy/nginx.conf).
HTTPS = env.bool("DJANGO_HTTPS", default=True)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = 31_536_000 if HTTPS else 0
# Opt-in, both: includeSubDomains holds every subdomain of the name to HTTPS for a
# year, and preload asks browsers to build that in, which takes months to undo. Only
# whoever owns the domain can know that every subdomain serves HTTPS.
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS and env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = HTTPS and env.bool("DJANGO_HSTS_PRELOAD", default=False)
# `check --deploy` warns about exactly those two; they are off on purpose (above).
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]
# A request is https when X-Forwarded-Proto says so. Safe only because nothing but the
# TLS proxy can reach Daphne: it sets the header on every request, overwriting the
# client's (proxy/nginx.conf), and Daphne listens only on networks of the proxy, the
# health checks and the load test (docker-compose.yml: `web`; the native stack: loopback).
# Wherever anyone else can reach Daphne, anyone can claim https.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes talk plain HTTP inside the network
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "chat.views.csrf_failure"  # a JSON error, like the rest of the API

# --- Database: PgBouncer in transaction mode --------------------------------
# pooled_database() (the pooled-postgres package, pooled-postgres/) writes the entry: every
# option a transaction pooler and an ASGI server need, each with its reason; its system
# checks (`manage.py check`) name any that is dropped. tests/test_pooler_pitfalls.py
# proves each against the real PgBouncer.


def _database(url_var: str, password_var: str) -> dict:
    config = env.db_url(url_var)
    if env.str(password_var, default=""):  # also set by {password_var}_FILE
        config["PASSWORD"] = require_secret(env, password_var)
    return config


def _choice(name: str, choices: dict[str, str], default: str) -> str:
    value = env.str(name, default=default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return choices[value]


# How many processes serve this project on this host (the checks compare the pools and the
# channel layer with it); several hosts make more, which the checks then undercount.
ASGI_PROCESSES = env.int("APP_WORKERS", default=1)
# Django's pool in front of PgBouncer, per process; 0 turns it off.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=4)

DATABASES = {
    # The app's runtime path to PostgreSQL: through PgBouncer. TLS comes with the URL:
    # ?sslmode=verify-full&sslrootcert=<the CA> checks PgBouncer's certificate and name.
    "default": pooled_database(
        _database("DATABASE_URL", "DATABASE_PASSWORD"),
        pool_max_size=DATABASE_POOL_MAX_SIZE,
        pool_min_size=env.int("DATABASE_POOL_MIN_SIZE", default=1),
        pool_timeout=env.float("DATABASE_POOL_TIMEOUT", default=5.0),
        # socket: no round trip unless the socket shows trouble, then the whole pool is
        # swept; query: Django's own, an empty query before every checkout, which finds
        # dead connections one backoff step at a time (`make bench` compares).
        health_check=_choice("DATABASE_POOL_CHECK", {name: name for name in HEALTH_CHECK_ENGINES}, "socket"),
    )
}
# For `make bench`'s comparison profiles only, which leak on purpose (naive, pgbouncer-60):
# their migrate job would otherwise stop at the check that names the leak.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=0)
if DATABASES["default"]["CONN_MAX_AGE"] != 0:
    SILENCED_SYSTEM_CHECKS.append("pooled_postgres.E001")
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)

# Straight to PostgreSQL, for migrations/DDL only (`manage.py migrate --database direct`):
# DDL and session state do not belong behind a transaction pooler.
if env.str("DIRECT_DATABASE_URL", default=""):
    DATABASES["direct"] = {
        **_database("DIRECT_DATABASE_URL", "DIRECT_DATABASE_PASSWORD"),
        "CONN_MAX_AGE": 0,
    }

# --- The WebSocket consumer's database work -----------------------------------------
# 0 (the default): Channels' database_sync_to_async, thread-sensitive: every database call
# of the process, whichever socket it serves, runs on one thread, one after the other.
# N > 0: N threads of the consumer's own per process (chat/database.py), so calls for
# different sockets run at once; a socket's own calls still run one at a time, in order.
# Each thread takes its connection from Django's pool, and that pool is the bound: more
# threads than its DATABASE_POOL_MAX_SIZE connections would only queue in the pool (and
# time out there after DATABASE_POOL_TIMEOUT), so they are refused. Without the pool
# (0) they are refused too: every call would then log in to PgBouncer anew (TLS and
# SCRAM, per message) or, with CONN_MAX_AGE > 0, each thread would keep a connection of
# its own for the life of the process, outside any bound the pool's checks can see.
# HTTP views share the pool: at N = DATABASE_POOL_MAX_SIZE a burst of socket traffic
# can hold every connection, and a view waits (at most DATABASE_POOL_TIMEOUT) for one.
CHAT_DATABASE_THREADS = env.int("CHAT_DATABASE_THREADS", default=0)
if CHAT_DATABASE_THREADS < 0:
    raise ImproperlyConfigured(
        f"CHAT_DATABASE_THREADS={CHAT_DATABASE_THREADS} is negative: set it to 0 (one shared "
        "database thread per process) or to at most DATABASE_POOL_MAX_SIZE"
    )
if CHAT_DATABASE_THREADS and not DATABASE_POOL_MAX_SIZE:
    raise ImproperlyConfigured(
        f"CHAT_DATABASE_THREADS={CHAT_DATABASE_THREADS} needs Django's connection pool, which "
        "DATABASE_POOL_MAX_SIZE=0 turns off: set DATABASE_POOL_MAX_SIZE to at least "
        f"{CHAT_DATABASE_THREADS}, or CHAT_DATABASE_THREADS=0"
    )
if CHAT_DATABASE_THREADS > DATABASE_POOL_MAX_SIZE:
    raise ImproperlyConfigured(
        f"CHAT_DATABASE_THREADS={CHAT_DATABASE_THREADS} is more than the {DATABASE_POOL_MAX_SIZE} "
        f"connections of Django's pool per process: set CHAT_DATABASE_THREADS to at most "
        f"{DATABASE_POOL_MAX_SIZE}, or DATABASE_POOL_MAX_SIZE to at least {CHAT_DATABASE_THREADS}"
    )
# The most posts one database call stores (chat/posting.py): the posts of every socket of
# the process that came while the call before ran, in one INSERT and one commit. Under
# load that spares each message its own thread hop, pool checkout and round trips; alone,
# a post goes at once. 1 stores each post on its own. The cap keeps a statement's size
# (CHAT_MAX_TEXT_CHARS per post) and the time a connection is held for it bounded.
CHAT_POST_BATCH_MAX = env.int("CHAT_POST_BATCH_MAX", default=100)
if CHAT_POST_BATCH_MAX < 1:
    raise ImproperlyConfigured(
        f"CHAT_POST_BATCH_MAX={CHAT_POST_BATCH_MAX}: set it to 1 (each post on its own) or more"
    )
# What a real handler does before it stores a message, off by default: `make bench`'s
# realistic-database scenario turns it on (chat/store.py, add_messages_checked).
CHAT_MESSAGE_CHECKS = env.bool("CHAT_MESSAGE_CHECKS", default=False)

# --- Channels ------------------------------------------------------------------
# One Daphne process can use the in-memory layer; several processes need a shared
# layer so a message broadcast by one reaches members connected to another.
#
# Redis pub/sub by default: a broadcast is one PUBLISH that each process fans out
# to its own members, and membership lives in the process, so it ends with it.
# channels_redis' pub/sub layer, except that the PUBLISHes waiting at once go to
# Redis in one round trip (chat/layer.py).
# It is faster than channels_redis' list-based "core" layer (`make bench` measures
# both: config pooled-djangopool+core-layer; the README has the figures). The core
# layer also runs out of its per-process Redis pool (redis-py 8 caps it) when many
# members join or leave at once: consumers crash ("Too many connections") and leave
# dead members in their groups for group_expiry (a day). Pub/sub is at-most-once (the layer's README calls it
# beta): a member whose Redis connection drops misses broadcasts meanwhile;
# messages are in PostgreSQL either way, and history fills the gap.
# CHANNEL_LAYER_BACKEND=core switches back.
# https://github.com/django/channels_redis#usage
# CHANNEL_LAYER_URL names the server and user, never the password: e.g.
# rediss://chat@redis:6379/0 (rediss: TLS, the server's certificate checked against
# CHANNEL_LAYER_CA_FILE); the password comes from CHANNEL_LAYER_PASSWORD (_FILE).
CHANNEL_LAYER_URL = env.str("CHANNEL_LAYER_URL", default="")
CHANNEL_LAYER_BACKENDS = {
    "pubsub": "chat.layer.CoalescingPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",
}
CHANNEL_LAYER_BACKEND = _choice("CHANNEL_LAYER_BACKEND", CHANNEL_LAYER_BACKENDS, default="pubsub")


def _channel_layer_host() -> dict:
    host = {
        "address": CHANNEL_LAYER_URL.strip(),
        # redis-py 8 cuts every read at 5 s by default, the same 5 s that
        # channels_redis blocks in BZPOPMIN waiting for a message: consumers
        # then crash with "Timeout reading from ..." and sockets drop.
        # Longer than that wait, still finite so a dead Redis is noticed.
        # https://github.com/django/channels_redis/issues/422
        "socket_timeout": 15,
    }
    if env.str("CHANNEL_LAYER_PASSWORD", default=""):
        host["password"] = require_secret(env, "CHANNEL_LAYER_PASSWORD")
    if ca_file := env.str("CHANNEL_LAYER_CA_FILE", default=""):
        host.update(ssl_ca_certs=ca_file, ssl_cert_reqs="required", ssl_check_hostname=True)
    return host


if CHANNEL_LAYER_URL:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": CHANNEL_LAYER_BACKEND, "CONFIG": {"hosts": [_channel_layer_host()]}}
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Chat protocol limits (see README, "WebSocket protocol") ---------------------
CHAT_MAX_FRAME_BYTES = env.int("CHAT_MAX_FRAME_BYTES", default=8192)
CHAT_MAX_TEXT_CHARS = env.int("CHAT_MAX_TEXT_CHARS", default=2000)
CHAT_HISTORY_MAX = env.int("CHAT_HISTORY_MAX", default=100)
CHAT_RATE_PER_S = env.float("CHAT_RATE_PER_S", default=20.0)
CHAT_RATE_BURST = env.int("CHAT_RATE_BURST", default=40)

# --- Demo: the pool on the chat page ---------------------------------------------
# CHAT_SHOW_POOL=true puts PostgreSQL's server connections for the app role, against the
# bound PgBouncer promises, on the chat page, refreshed from GET /pool-status. A demo
# feature, off by default everywhere, production included (DJANGO_HTTPS=true, DEBUG off):
# it tells anyone who loads the page how many connections the database holds, and lets
# them make the app query pg_stat_activity (at most once a second per process). Off, the
# endpoint is 404 and the page has no panel. The monitoring profile is production's view.
CHAT_SHOW_POOL = env.bool("CHAT_SHOW_POOL", default=False)
# The bound comes from PgBouncer's own settings file (default_pool_size + reserve_pool_size,
# capped by max_db_connections / max_user_connections), read once at start-up: the staged
# pgbouncer/ folder beside app/ natively; a container needs the file mounted there.
CHAT_SHOW_POOL_PGBOUNCER_INI = Path(
    env.str("CHAT_SHOW_POOL_PGBOUNCER_INI", default=str(BASE_DIR.parent / "pgbouncer" / "pgbouncer.ini"))
)
CHAT_POOL_BOUND = None
if CHAT_SHOW_POOL:
    try:
        CHAT_POOL_BOUND = bound_from_ini(CHAT_SHOW_POOL_PGBOUNCER_INI)
    except (OSError, ValueError) as error:
        raise ImproperlyConfigured(
            f"CHAT_SHOW_POOL is on, but PgBouncer's bound cannot be read ({error}): set "
            "CHAT_SHOW_POOL_PGBOUNCER_INI to the pgbouncer.ini PgBouncer runs with, "
            "or turn CHAT_SHOW_POOL off"
        ) from error

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("DJANGO_LOG_LEVEL", default="INFO")},
}
