#!/usr/bin/env bash
# Install Debian's Chromium and its chromedriver for tests/test_browser.py, when
# missing. Debian's own packages on purpose: the test machines reach the Debian
# mirror but no browser download site, so neither Selenium Manager nor
# Playwright could fetch a browser. Uses sudo when not root. Package scripts are
# kept from starting system-wide services, as native/install-system-packages.sh does.
set -o errexit -o nounset -o pipefail

packages=()
[[ -x /usr/bin/chromium ]] || packages+=(chromium)
[[ -x /usr/bin/chromedriver ]] || packages+=(chromium-driver)
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

echo "installing: ${packages[*]} (about a minute)"
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
