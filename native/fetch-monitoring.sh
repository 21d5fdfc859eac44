#!/usr/bin/env bash
# Prometheus and the two exporters for `make monitoring`, from Debian's packages,
# unpacked into a cache directory and never installed:
#   fetch-monitoring.sh DIR    DIR/usr/bin/ then holds prometheus (and promtool),
#                              prometheus-postgres-exporter and prometheus-pgbouncer-exporter
#
# Not `apt-get install`: Debian's prometheus and prometheus-postgres-exporter
# packages enable a systemd service (policy-rc.d keeps it from starting now, not at
# the next boot), which would listen on all interfaces, on the ports these take. So
# the .debs are fetched with an apt state of their own (Debian's mirror and keyring,
# as compose/engine.sh fetches Compose v2), leaving the host's sources, packages and
# services as they were; it needs no root. The binaries need only libc.
#
# Fetched again when the package list below changes, or after MONITORING_MAX_AGE_DAYS
# (30) for Debian's fixes. DEBIAN_MIRROR as in compose/engine.sh.
set -o errexit -o nounset -o pipefail

dir=${1:?usage: fetch-monitoring.sh DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
max_age_days=${MONITORING_MAX_AGE_DAYS:-30}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# Debian 12's Prometheus and PostgreSQL exporter, and Debian 13's PgBouncer exporter:
# Debian 12's prometheus-pgbouncer-exporter (1.7) is another program, in Python, whose
# metric names the rules and the dashboard do not use. 0.10 is a Go binary like the others.
packages=("prometheus=2.42.*" "prometheus-postgres-exporter=0.11.*" "prometheus-pgbouncer-exporter=1:0.10.*")
stamp=$dir/.fetched # the package list it was fetched for; its age is the copy's

log() { echo "fetch-monitoring: $*" >&2; }

fresh() {
  [[ -f $stamp && $(<"$stamp") == "${packages[*]}" && -z $(find "$stamp" -mtime "+$max_age_days") ]]
}

mkdir -p "$(dirname "$dir")"
# One fetch at a time per cache directory (stacks on one machine share it).
exec 9>"$dir.lock"
flock 9
fresh && exit 0

[[ -r $keyring ]] || {
  log "error: $keyring is missing: install Debian's keyring (sudo apt-get install debian-archive-keyring)"
  exit 1
}
new=$(mktemp -d "$dir.new.XXXXXX")
trap 'rm -rf "$new"' EXIT
apt=$new/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources" "$apt/debs" "$new/root"
: >"$apt/status"
cat >"$apt/sources/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates trixie trixie-updates
Components: main
Signed-By: $keyring

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security trixie-security
Components: main
Signed-By: $keyring
EOF
options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
  -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/status"
  -o APT::Sandbox::User=root)
log "fetching ${packages[*]} from $mirror into $dir"
apt-get "${options[@]}" -qq update >&2
# Each version pattern picks the newest of its minor release, with Debian's fixes in it.
(cd "$apt/debs" && apt-get "${options[@]}" -qq download "${packages[@]}" >&2)
for deb in "$apt"/debs/*.deb; do
  dpkg-deb -x "$deb" "$new/root"
done
for binary in prometheus prometheus-postgres-exporter prometheus-pgbouncer-exporter; do
  "$new/root/usr/bin/$binary" --version >/dev/null 2>&1 || {
    log "error: the fetched $binary does not run here: $("$new/root/usr/bin/$binary" --version 2>&1 | head -n 1)"
    exit 1
  }
done
printf '%s\n' "${packages[*]}" >"$new/root/.fetched"
chmod 0755 "$new/root" # mktemp's 0700 would shut out the service user
rm -rf "$dir"
mv "$new/root" "$dir"
log "done: $dir/usr/bin"
