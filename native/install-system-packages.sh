#!/usr/bin/env bash
# Install the Debian/Ubuntu packages the native stack needs, when missing:
# PostgreSQL's server binaries, PgBouncer, Redis, the PostgreSQL client tools and
# Python's venv module. Uses sudo when not root. Package scripts are kept from
# starting system-wide services: the stack runs its own processes on its own ports.
set -o errexit -o nounset -o pipefail

# Debian installs daemons such as pgbouncer in /usr/sbin, which is not on a
# regular user's PATH: look there too, or they would seem missing every time.
PATH=$PATH:/usr/sbin:/sbin

packages=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || packages+=(postgresql)
command -v pg_isready >/dev/null || packages+=(postgresql-client)
command -v pgbouncer >/dev/null || packages+=(pgbouncer)
command -v redis-server >/dev/null || packages+=(redis-server)
command -v openssl >/dev/null || packages+=(openssl)  # secrets/generate.py: the TLS certificates
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
# As root the services run as `postgres`, the app from a virtualenv of the system's
# Python (native/layout.py); setpriv (util-linux) drops to that user.
if [[ $(id -u) == 0 ]]; then
  [[ -x /usr/bin/python3 ]] || packages+=(python3)
  command -v setpriv >/dev/null || packages+=(util-linux)
fi
if ((${#packages[@]} == 0)); then
  exit 0
fi

sudo=()
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null || { echo "error: installing ${packages[*]} needs root or sudo" >&2; exit 1; }
  sudo=(sudo)
fi

# Debian's invoke-rc.d asks /usr/sbin/policy-rc.d whether to start a service;
# 101 means "no". Only ours is removed afterwards.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
  "${sudo[@]}" chmod 755 "$policy"
  trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

echo "installing: ${packages[*]}"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
