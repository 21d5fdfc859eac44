#!/usr/bin/env bash
# The app's entrypoint, in the container and in the native stack alike.
#   entrypoint.sh migrate   wait for PostgreSQL, apply migrations straight to it (DIRECT_DATABASE_URL)
#   entrypoint.sh serve     wait for PgBouncer, then run APP_WORKERS Daphne processes on APP_BIND:APP_PORT,
#                           pinging idle WebSockets every APP_PING_INTERVAL seconds, and their
#                           metrics on APP_METRICS_BIND:APP_METRICS_PORT/metrics
# Settings come from the environment (chat_site/settings.py); the wait is bounded
# by APP_WAIT_SECONDS (default 60).
set -o errexit -o nounset -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
wait_seconds=${APP_WAIT_SECONDS:-60}

case ${1:-serve} in
  migrate)
    python manage.py wait_for_database --database direct --timeout "$wait_seconds"
    exec python manage.py migrate --database direct --no-input
    ;;
  serve)
    python manage.py wait_for_database --database default --timeout "$wait_seconds"
    export APP_BIND=${APP_BIND:-0.0.0.0} APP_PORT=${APP_PORT:-8000} APP_WORKERS=${APP_WORKERS:-2}
    # Below the idle timeout of whatever sits in front (nginx: 60 s by default).
    export APP_PING_INTERVAL=${APP_PING_INTERVAL:-20}
    export APP_RUN_DIR=${APP_RUN_DIR:-/tmp}
    # The metrics (chat_site/metrics_server.py): on their own port, never Daphne's.
    export APP_METRICS_BIND=${APP_METRICS_BIND:-0.0.0.0} APP_METRICS_PORT=${APP_METRICS_PORT:-9100}
    # Each Daphne process keeps its metrics in files here, named by its pid. Emptied
    # before any process starts, as prometheus_client's multiprocess mode requires:
    # a previous run's files would be added to this run's, and in a restarted
    # container the pids repeat, so a new process would take over its predecessor's
    # values (its open WebSockets among them).
    export PROMETHEUS_MULTIPROC_DIR=$APP_RUN_DIR/metrics
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -m 0700 "$PROMETHEUS_MULTIPROC_DIR"
    exec supervisord --configuration supervisord.conf
    ;;
  *)
    echo "usage: entrypoint.sh migrate|serve" >&2
    exit 2
    ;;
esac
