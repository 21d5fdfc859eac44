#!/usr/bin/env bash
# Runs a command as the owner of RESULTS_DIR: the Compose `loadtest` service writes
# its report and plot into the host's ./results/compose (a bind mount), and the files
# must belong to whoever ran `docker compose run`, not to a user of the image's.
#
# Starts as root with only the capabilities this takes (docker-compose.yml): copies
# the monitor's secrets (SECRETS_SOURCE_DIR, readable by the `monitor` user only)
# to SECRETS_DIR, where the monitor's settings name them, for that owner; then
# becomes the owner with no capability at all, and execs the command.
set -o errexit -o nounset -o pipefail

results=${RESULTS_DIR:?set RESULTS_DIR, the directory the results go to}
source_dir=${SECRETS_SOURCE_DIR:?set SECRETS_SOURCE_DIR, the monitor\'s secrets}
target_dir=${SECRETS_DIR:?set SECRETS_DIR, where the copies go (a tmpfs)}
[[ -d $results ]] || { echo "error: $results is not a directory: mount the host's results directory there" >&2; exit 2; }
owner=$(stat --format=%u "$results")
group=$(stat --format=%g "$results")

# Filled while root's, then handed over: once they are the owner's, root without
# CAP_FOWNER could not change their modes any more.
mkdir -m 0700 "$target_dir"
umask 0377
for file in "$source_dir"/*; do
  cp "$file" "$target_dir/"
  chown "$owner:$group" "$target_dir/${file##*/}"
done
chmod 0500 "$target_dir"
chown "$owner:$group" "$target_dir"

umask 0022  # the results: readable by all, as any file of theirs
# Not root's home, which the owner may not enter: libpq looks there for a client
# certificate, and refuses to connect when it cannot tell whether one is there.
export HOME=/tmp
# An empty bounding set: no capability survives, even when the owner is root.
exec setpriv --reuid="$owner" --regid="$group" --clear-groups --inh-caps=-all --bounding-set=-all "$@"
