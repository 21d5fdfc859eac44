#!/usr/bin/env bash
# `docker compose config -q` on docker-compose.yml, with .env.example's values, for
# every profile: Compose's own parser (interpolation, merges, depends_on, profiles)
# on top of the JSON-schema check. Skipped, saying so, where no Compose is installed
# (`compose/engine.sh install` installs Debian's).
set -o errexit -o nounset -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "compose config: skipped, no docker compose / docker-compose installed"
  exit 0
fi

# A copy of .env.example: `config` needs every required value set, and a .env in
# the checkout (a developer's real secrets) must be neither read nor created.
env_file=$(mktemp)
trap 'rm -f "$env_file"' EXIT
cp .env.example "$env_file"

for profile in "" loadtest; do
  "${compose[@]}" --project-directory . --file docker-compose.yml --env-file "$env_file" \
    ${profile:+--profile "$profile"} config --quiet
done
echo "compose config: ok ($("${compose[@]}" version --short 2>/dev/null || echo "${compose[*]}"))"
