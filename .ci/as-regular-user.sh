#!/usr/bin/env bash
# The README's native path as most people run it: a regular user with sudo, whose
# PATH has no /usr/sbin (where Debian puts pgbouncer). CI runs as root, which would
# hide what such a user meets, so this creates one, copies the checkout into its
# home and runs, as that user, in a login shell: make up, the end-to-end check,
# make down. Whatever happens, the stack it started is stopped.
set -o errexit -o nounset -o pipefail

user=${CI_REGULAR_USER:-chat-ci}
checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [[ $(id -u) != 0 ]]; then
  echo "error: run this as root (it creates the user $user); as a regular user just run make up" >&2
  exit 2
fi
if ! command -v sudo >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends sudo >/dev/null
fi
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
printf '%s ALL=(ALL) NOPASSWD:ALL\n' "$user" >"/etc/sudoers.d/90-$user"
chmod 0440 "/etc/sudoers.d/90-$user"

home=$(getent passwd "$user" | cut -d: -f6)
copy=$home/chat
rm -rf "$copy"
mkdir -p "$copy"
# The checkout as it is (committed or not), without its ignored state (.venv, .stack).
git -C "$checkout" ls-files -z --cached --others --exclude-standard |
  tar -C "$checkout" --null --files-from=- -cf - | tar -C "$copy" -xf -
chown -R "$user:" "$copy"

as_user() { sudo --user="$user" --login -- bash -c "cd ~/chat && $1"; }
trap 'as_user "make down" || true' EXIT

echo "as $user (PATH=$(sudo --user="$user" --login -- printenv PATH)):"
if ! as_user "make up && .venv/bin/python -m native.smoke"; then
  as_user 'tail -n 30 .stack/logs/*.log' || true
  exit 1
fi
as_user "make down"
trap - EXIT
