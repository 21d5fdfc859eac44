#!/usr/bin/env bash
# Runs a command as the owner of RESULTS_DIR: the Compose `loadtest` service writes
# its report and plot into the host's ./results/compose (a bind mount), and the files
# must belong to whoever ran `docker compose run`, not to a user of the image's.
#
# Starts as root with only the capabilities this takes (docker-compose.yml): copies
# the monitor's password files (MONITOR_*_PASSWORD_FILE, readable by the `monitor`
# user only) into SECRETS_COPY_DIR for that owner, points the variables at the copies,
# then becomes the owner with no capability at all, and execs the command.
set -o errexit -o nounset -o pipefail

results=${RESULTS_DIR:?set RESULTS_DIR, the directory the results go to}
copies=${SECRETS_COPY_DIR:?set SECRETS_COPY_DIR, a tmpfs for the password files}
[[ -d $results ]] || { echo "error: $results is not a directory: mount the host's results directory there" >&2; exit 2; }
owner=$(stat --format=%u "$results")
group=$(stat --format=%g "$results")

# Filled while root's, then handed over: without CAP_FOWNER, root could not change
# it once it is the owner's.
handed=$copies/monitor
mkdir -m 0700 "$handed"
umask 0377  # each copy made 0400, then given away: chmod after chown would need CAP_FOWNER
for name in MONITOR_POSTGRES_PASSWORD_FILE MONITOR_PGBOUNCER_PASSWORD_FILE; do
  source_file=${!name:?set $name}
  cp "$source_file" "$handed/${name%_FILE}"
  chown "$owner:$group" "$handed/${name%_FILE}"
  export "$name=$handed/${name%_FILE}"
done
chmod 0500 "$handed"
chown "$owner:$group" "$handed"

umask 0022  # the results: readable by all, as any file of theirs
# An empty bounding set: no capability survives, even when the owner is root.
exec setpriv --reuid="$owner" --regid="$group" --clear-groups --inh-caps=-all --bounding-set=-all "$@"
