# shellcheck shell=bash
# Shared by the service entrypoints: read a secret from NAME or from the file
# named by NAME_FILE (Docker/systemd secrets), and refuse a missing or
# placeholder value with a message naming the fix. app/chat_site/secrets.py
# applies the same rule to the app's secrets.

# require_secret NAME -> prints the value
require_secret() {
  local name=$1 file_var="${1}_FILE" value
  if [[ -n ${!file_var:-} ]]; then
    [[ -r ${!file_var} ]] || { echo "error: $file_var=${!file_var} is not a readable file" >&2; return 1; }
    value=$(<"${!file_var}")
  else
    value=${!name:-}
  fi
  if [[ -z $value ]]; then
    echo "error: $name is not set: set $file_var to the file that holds it (secrets/generate.py makes them all)" >&2
    return 1
  fi
  if [[ ${value,,} =~ change-?me|placeholder ]]; then
    echo "error: $name is still a placeholder: put a random value there, or let secrets/generate.py make one" >&2
    return 1
  fi
  if (( ${#value} < 16 )); then
    echo "error: $name is shorter than 16 characters: use a random value (secrets/generate.py makes them)" >&2
    return 1
  fi
  printf '%s' "$value"
}
