#!/usr/bin/env bash
# Start PostgreSQL with this folder's postgresql.conf and pg_hba.conf.
#
# On the first start of an empty data directory it runs initdb and the SQL in
# initdb/ (roles, database, PgBouncer's lookup function) in a scratch directory,
# and moves the result into place only when all of it succeeded. It never
# deletes or rewrites an existing cluster.
#
# Used as the container's entrypoint and, unchanged, by the native stack.
#   PGDATA                     data directory (its parent must be writable)
#   POSTGRES_PORT              default 5432
#   POSTGRES_LISTEN_ADDRESSES  default '*'
#   POSTGRES_SOCKET_DIR        default /var/run/postgresql (also where pg_hba.conf is rendered)
#   POSTGRES_BIN_DIR           default: the newest /usr/lib/postgresql/*/bin
#   POSTGRES_POOLER_CLIENTS, POSTGRES_MIGRATE_CLIENTS, POSTGRES_MONITOR_CLIENTS
#                              where each role may log in from (pg_hba.conf), default samenet
#   TLS_CERT_FILE, TLS_KEY_FILE  this server's certificate and key: TLS on, and required
# First start only (or *_FILE), SCRAM verifiers, not passwords (secrets/generate.py
#   makes them): POSTGRES_OWNER_VERIFIER, POSTGRES_APP_VERIFIER,
#   PGBOUNCER_AUTH_VERIFIER, POSTGRES_MONITOR_VERIFIER
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/secrets.sh
source "$here/../lib/secrets.sh"

: "${PGDATA:?set PGDATA to the data directory}"
port=${POSTGRES_PORT:-5432}
listen=${POSTGRES_LISTEN_ADDRESSES:-*}
socket_dir=${POSTGRES_SOCKET_DIR:-/var/run/postgresql}
bin_dir=${POSTGRES_BIN_DIR:-$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)}
if [[ ! -x $bin_dir/postgres ]]; then
  echo "error: no PostgreSQL server binaries in '${bin_dir}': install postgresql or set POSTGRES_BIN_DIR" >&2
  exit 1
fi
if [[ $(id -u) == 0 ]]; then
  echo "error: PostgreSQL refuses to run as root: run this as an unprivileged user" >&2
  exit 1
fi

# pg_hba.conf, rendered (see its header): HOST -> hostssl with TLS, and each
# {X_CLIENTS} -> one line per address in POSTGRES_X_CLIENTS.
mkdir -p "$socket_dir"
hba=$socket_dir/pg_hba.conf
connection_type=host
server_options=(-c "config_file=$here/postgresql.conf" -c "hba_file=$hba" -c "port=$port")
if [[ -n ${TLS_CERT_FILE:-} || -n ${TLS_KEY_FILE:-} ]]; then
  for file in "${TLS_CERT_FILE:?set TLS_CERT_FILE with TLS_KEY_FILE}" "${TLS_KEY_FILE:?set TLS_KEY_FILE with TLS_CERT_FILE}"; do
    [[ -r $file ]] || { echo "error: $file is not a readable file" >&2; exit 1; }
  done
  connection_type=hostssl
  server_options+=(-c ssl=on -c "ssl_cert_file=$TLS_CERT_FILE" -c "ssl_key_file=$TLS_KEY_FILE")
fi
render_hba() {
  local line name addresses address
  while IFS= read -r line; do
    if [[ $line =~ ^HOST[[:space:]] ]]; then
      line=$connection_type${line#HOST}
    fi
    if [[ $line =~ \{([A-Z]+_CLIENTS)\} ]]; then
      name=POSTGRES_${BASH_REMATCH[1]}
      addresses=${!name:-samenet}
      for address in $addresses; do
        printf '%s\n' "${line/"{${BASH_REMATCH[1]}}"/$address}"
      done
    else
      printf '%s\n' "$line"
    fi
  done <"$here/pg_hba.conf"
}
render_hba >"$hba.new"
mv "$hba.new" "$hba"

initialise() {
  local scratch="$PGDATA.partial"
  if [[ -e $scratch ]]; then
    echo "error: $scratch is left from an interrupted first start; remove it and start again" >&2
    exit 1
  fi
  # Read every secret before doing anything, so a missing one leaves nothing behind.
  # Exported for the SQL files' \getenv: environment, unlike arguments, is not
  # visible to other users in the process list.
  local owner app auth monitor
  owner=$(require_secret POSTGRES_OWNER_VERIFIER)
  app=$(require_secret POSTGRES_APP_VERIFIER)
  auth=$(require_secret PGBOUNCER_AUTH_VERIFIER)
  monitor=$(require_secret POSTGRES_MONITOR_VERIFIER)
  export INIT_OWNER_VERIFIER=$owner INIT_APP_VERIFIER=$app
  export INIT_PGBOUNCER_AUTH_VERIFIER=$auth INIT_MONITOR_VERIFIER=$monitor

  echo "first start: initialising a new cluster in $PGDATA"
  "$bin_dir/initdb" --pgdata="$scratch" --username="$(id -un)" --encoding=UTF8 \
    --locale=C.UTF-8 --auth-local=peer --auth-host=reject >/dev/null
  # A private server while the roles are created: no TCP, and its socket in the
  # scratch directory, not the socket directory, so no health check can take it
  # for the real server.
  "$bin_dir/pg_ctl" --pgdata="$scratch" --wait --timeout=60 --silent start \
    -o "$(printf '%q ' "${server_options[@]}" -c listen_addresses= -c "unix_socket_directories=$scratch")"
  local sql
  for sql in "$here"/initdb/*.sql; do
    "$bin_dir/psql" --no-psqlrc --quiet --host="$scratch" --port="$port" --dbname=postgres \
      --file="$sql" || { "$bin_dir/pg_ctl" --pgdata="$scratch" --mode=fast stop; exit 1; }
  done
  "$bin_dir/pg_ctl" --pgdata="$scratch" --wait --mode=fast --silent stop
  mv "$scratch" "$PGDATA"
  echo "first start: cluster ready"
}

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  if [[ -d $PGDATA && -n $(ls -A "$PGDATA") ]]; then
    echo "error: $PGDATA is not empty but holds no cluster; refusing to touch it" >&2
    exit 1
  fi
  rmdir "$PGDATA" 2>/dev/null || true
  initialise
fi

exec "$bin_dir/postgres" -D "$PGDATA" "${server_options[@]}" \
  -c "listen_addresses=$listen" -c "unix_socket_directories=$socket_dir"
