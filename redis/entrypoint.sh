#!/usr/bin/env bash
# Start Redis with this folder's redis.conf plus where to listen and the password.
#
# Used as the container's entrypoint and, unchanged, by the native stack.
#   REDIS_BIND      default 0.0.0.0
#   REDIS_PORT      default 6379
#   REDIS_RUN_DIR   default /run/redis (runtime config, mode 0600)
# Secret (or REDIS_PASSWORD_FILE): REDIS_PASSWORD
set -o errexit -o nounset -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/secrets.sh
source "$here/../lib/secrets.sh"

run_dir=${REDIS_RUN_DIR:-/run/redis}
password=$(require_secret REDIS_PASSWORD)

mkdir -p "$run_dir"
umask 077
# The password goes in a file, not on the command line where `ps` would show it.
cat >"$run_dir/redis.conf.new" <<CONF
include $here/redis.conf
bind ${REDIS_BIND:-0.0.0.0}
port ${REDIS_PORT:-6379}
dir $run_dir
requirepass "$password"
CONF
mv "$run_dir/redis.conf.new" "$run_dir/redis.conf"

exec redis-server "$run_dir/redis.conf"
