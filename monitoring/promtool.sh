#!/usr/bin/env bash
# Check the alert rules (monitoring/rules/*.rules.yml) and run their unit tests
# (*.rules.test.yml) with promtool, as `make lint` does.
#
# promtool comes from the distribution's `prometheus` package (Debian 12: 2.42),
# unpacked, not installed: installing it would start a Prometheus service. The
# package is fetched with `apt-get download`, which needs no root, only a writable
# directory, and only promtool is kept, in .venv/promtool/, for the next run.
# Where the package lists were never fetched, `apt-get update` runs first (with
# sudo as a regular user). PROMTOOL=/path/to/promtool uses that one instead.
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache=.venv/promtool

fetch_promtool() {
  if ! command -v apt-get >/dev/null; then
    echo "error: promtool is needed and there is no apt-get to fetch it with;" \
      "set PROMTOOL=/path/to/promtool (from a Prometheus release)" >&2
    exit 1
  fi
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    echo "promtool: the package lists do not know \`prometheus\` yet: apt-get update"
    if [[ $(id -u) == 0 ]]; then
      apt-get update -qq
    elif command -v sudo >/dev/null; then
      sudo apt-get update -qq
    else
      echo "error: apt-get update needs root or sudo; or set PROMTOOL=/path/to/promtool" >&2
      exit 1
    fi
  fi
  mkdir -p "$cache"
  # In the cache, so the finished binary is moved into place in one rename, and an
  # interrupted download never leaves a half-written promtool behind.
  work=$(mktemp -d "$cache/download.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # As root, apt downloads as its sandbox user _apt, which must be able to write here.
  if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
    chown _apt "$work"
  fi
  (cd "$work" && apt-get download -qq prometheus)
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  mv "$work/usr/bin/promtool" "$cache/promtool"
  rm -rf "$work"
  trap - EXIT
}

if [[ -n ${PROMTOOL:-} ]]; then
  promtool=$PROMTOOL
else
  promtool=$cache/promtool
  [[ -x $promtool ]] || fetch_promtool
fi

"$promtool" --version 2>&1 | sed -n 1p
"$promtool" check rules monitoring/rules/*.rules.yml
"$promtool" test rules monitoring/rules/*.rules.test.yml
