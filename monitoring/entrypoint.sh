#!/usr/bin/env bash
# Monitoring for the chat stack, from Debian's packages: Prometheus with this
# folder's prometheus.yml, rules/ and consoles/, and the two exporters it scrapes.
#   entrypoint.sh prometheus          scrape the targets below, evaluate rules/, serve consoles/chat.html
#   entrypoint.sh pgbouncer-exporter  PgBouncer's console (SHOW ...) as pgbouncer_stats, on EXPORTER_PORT (9127)
#   entrypoint.sh postgres-exporter   PostgreSQL as chat_monitor (pg_monitor), on EXPORTER_PORT (9187)
#
# Used as the container's entrypoint and, unchanged, by the native stack.
#   MONITORING_RUN_DIR     default /run/monitoring: the rendered config, password files (0600)
#   prometheus:   PROMETHEUS_LISTEN (0.0.0.0), PROMETHEUS_PORT (9090), PROMETHEUS_DATA_DIR (/prometheus),
#                 PROMETHEUS_RETENTION (15d), and comma-separated host:port lists
#                 PROMETHEUS_APP_TARGETS, PROMETHEUS_PGBOUNCER_TARGETS, PROMETHEUS_POSTGRES_TARGETS
#   exporters:    EXPORTER_LISTEN (0.0.0.0), EXPORTER_PORT; PGBOUNCER_HOST/PGBOUNCER_PORT (pgbouncer, 6432)
#                 or POSTGRES_HOST/POSTGRES_PORT (postgres, 5432); TLS_CA_FILE: verify the server's
#                 certificate and name (without it, no TLS: for measuring only, as elsewhere)
# Secrets (or *_FILE): PGBOUNCER_STATS_PASSWORD, POSTGRES_MONITOR_PASSWORD
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/secrets.sh
source "$here/../lib/secrets.sh"

run_dir=${MONITORING_RUN_DIR:-/run/monitoring}
mkdir -p "$run_dir"
umask 077

# libpq's connection options for TLS, for a URL's query string.
tls_options() {
  if [[ -n ${TLS_CA_FILE:-} ]]; then
    [[ -r $TLS_CA_FILE ]] || { echo "error: TLS_CA_FILE=$TLS_CA_FILE is not a readable file" >&2; return 1; }
    printf 'sslmode=verify-full&sslrootcert=%s' "$TLS_CA_FILE"
  else
    printf 'sslmode=disable'
  fi
}

# "a:1,b:2" -> "'a:1', 'b:2'" (a YAML flow list's items)
yaml_items() {
  local items item out=()
  IFS=, read -ra items <<<"$1"
  for item in "${items[@]}"; do out+=("'$item'"); done
  local IFS=,
  printf '%s' "${out[*]}"
}

case ${1:-} in
  prometheus)
    port=${PROMETHEUS_PORT:-9090}
    # prometheus.yml, its ${...} filled in; anything left unfilled is an error here, not a
    # target Prometheus would silently never reach.
    declare -A values=(
      [MONITORING_DIR]=$here
      [PROMETHEUS_PORT]=$port
      [PROMETHEUS_APP_TARGETS]=$(yaml_items "${PROMETHEUS_APP_TARGETS:?set PROMETHEUS_APP_TARGETS, e.g. app:9100}")
      [PROMETHEUS_PGBOUNCER_TARGETS]=$(yaml_items "${PROMETHEUS_PGBOUNCER_TARGETS:?set PROMETHEUS_PGBOUNCER_TARGETS, e.g. pgbouncer-exporter:9127}")
      [PROMETHEUS_POSTGRES_TARGETS]=$(yaml_items "${PROMETHEUS_POSTGRES_TARGETS:?set PROMETHEUS_POSTGRES_TARGETS, e.g. postgres-exporter:9187}")
    )
    config=$(<"$here/prometheus.yml")
    for name in "${!values[@]}"; do config=${config//"\${$name}"/${values[$name]}}; done
    if [[ $config =~ \$\{[A-Z_]+\} ]]; then
      echo "error: prometheus.yml names ${BASH_REMATCH[0]}, which this entrypoint does not fill in" >&2
      exit 1
    fi
    printf '%s\n' "$config" >"$run_dir/prometheus.yml.new"
    mv "$run_dir/prometheus.yml.new" "$run_dir/prometheus.yml"
    exec prometheus \
      --config.file="$run_dir/prometheus.yml" \
      --storage.tsdb.path="${PROMETHEUS_DATA_DIR:-/prometheus}" \
      --storage.tsdb.retention.time="${PROMETHEUS_RETENTION:-15d}" \
      --web.listen-address="${PROMETHEUS_LISTEN:-0.0.0.0}:$port" \
      --web.console.templates="$here/consoles" \
      --web.console.libraries="$here/consoles"
    ;;
  pgbouncer-exporter)
    host=${PGBOUNCER_HOST:-pgbouncer} port=${PGBOUNCER_PORT:-6432}
    password=$(require_secret PGBOUNCER_STATS_PASSWORD)
    # The exporter takes a URL; the password goes in a passfile (libpq's format, which
    # its driver reads), so it is in no URL, argument or environment variable.
    tls=$(tls_options)
    escaped=${password//\\/\\\\}
    printf '*:*:*:pgbouncer_stats:%s\n' "${escaped//:/\\:}" >"$run_dir/pgpass"
    export PGPASSFILE=$run_dir/pgpass
    exec prometheus-pgbouncer-exporter \
      --pgBouncer.connectionString="postgres://pgbouncer_stats@$host:$port/pgbouncer?$tls&connect_timeout=3" \
      --web.listen-address="${EXPORTER_LISTEN:-0.0.0.0}:${EXPORTER_PORT:-9127}"
    ;;
  postgres-exporter)
    host=${POSTGRES_HOST:-postgres} port=${POSTGRES_PORT:-5432}
    tls=$(tls_options)
    require_secret POSTGRES_MONITOR_PASSWORD >"$run_dir/postgres-password"
    export DATA_SOURCE_URI="$host:$port/chat?$tls&connect_timeout=3"
    export DATA_SOURCE_USER=chat_monitor DATA_SOURCE_PASS_FILE=$run_dir/postgres-password
    exec prometheus-postgres-exporter \
      --web.listen-address="${EXPORTER_LISTEN:-0.0.0.0}:${EXPORTER_PORT:-9187}"
    ;;
  *)
    echo "usage: entrypoint.sh prometheus|pgbouncer-exporter|postgres-exporter" >&2
    exit 2
    ;;
esac
