#!/usr/bin/env bash
# Start Redis with this folder's redis.conf, plus where to listen, TLS and its users.
#
# Used as the container's entrypoint and, unchanged, by the native stack.
#   REDIS_BIND      default 0.0.0.0
#   REDIS_PORT      default 6379 (TLS only when a certificate is given: no plaintext port)
#   REDIS_RUN_DIR   default /run/redis (runtime config, mode 0600)
#   TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE  this server's certificate, key and CA
#   (without them, for measuring what TLS costs only: plaintext)
# Secret (or REDIS_PASSWORD_SHA256_FILE): REDIS_PASSWORD_SHA256, the SHA-256 of the
#   `chat` user's password (secrets/generate.py); Redis never sees the password.
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/secrets.sh
source "$here/../lib/secrets.sh"

run_dir=${REDIS_RUN_DIR:-/run/redis}
port=${REDIS_PORT:-6379}
password_sha256=$(require_secret REDIS_PASSWORD_SHA256)
if [[ ! $password_sha256 =~ ^[0-9a-f]{64}$ ]]; then
  echo "error: REDIS_PASSWORD_SHA256 is not a SHA-256 in hex (64 of 0-9a-f): let secrets/generate.py make it" >&2
  exit 1
fi

if [[ -n ${TLS_CERT_FILE:-}${TLS_KEY_FILE:-}${TLS_CA_FILE:-} ]]; then
  for file in "${TLS_CERT_FILE:?set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE}" \
    "${TLS_KEY_FILE:?set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE}" \
    "${TLS_CA_FILE:?set TLS_CERT_FILE, TLS_KEY_FILE and TLS_CA_FILE}"; do
    [[ -r $file ]] || { echo "error: $file is not a readable file" >&2; exit 1; }
  done
  # The plaintext port is off; clients prove who they are with the ACL password,
  # not a certificate of their own.
  listen=$(printf 'port 0\ntls-port %s\ntls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\ntls-auth-clients no' \
    "$port" "$TLS_CERT_FILE" "$TLS_KEY_FILE" "$TLS_CA_FILE")
else
  listen="port $port"
fi

mkdir -p "$run_dir"
umask 077
# The password's hash goes in a file, not on the command line where `ps` would show it.
cat >"$run_dir/redis.conf.new" <<CONF
include $here/redis.conf
bind ${REDIS_BIND:-0.0.0.0}
$listen
dir $run_dir
user chat on #$password_sha256 $(grep -v "^#" "$here/chat.acl" | tr "\n" " ")
CONF
mv "$run_dir/redis.conf.new" "$run_dir/redis.conf"

exec redis-server "$run_dir/redis.conf"
