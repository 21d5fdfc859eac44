#!/usr/bin/env bash
# A Docker engine for the Compose stack on a machine that has none and reaches
# no image registry (CI and the test machines, measured in shared/containers.md).
#
#   engine.sh install      install Debian's docker.io, a Compose, debootstrap and
#                          nftables when missing (nftables only to undo dockerd's rules)
#   engine.sh start        use the engine DOCKER_HOST (or /var/run/docker.sock) names if
#                          it answers; else start a private dockerd. Prints the
#                          DOCKER_HOST to use on stdout.
#   engine.sh stop         stop the private dockerd (by its PID), if this script
#                          started it, and undo what it changed on the host
#   engine.sh base-image   build BASE_IMAGE (debian:trixie-slim) with debootstrap
#                          when the engine lacks it; the root filesystem is cached
#   engine.sh compose-v2   fetch Debian 13's Compose v2 (`docker compose`) into the
#                          cache, without touching the host's package sources; prints
#                          the DOCKER_CONFIG directory that holds it as a CLI plugin
#   engine.sh run CMD...   start, run CMD with DOCKER_HOST exported, stop whatever happens
#
# The private engine keeps its images (the cache) under CHAT_ENGINE_DATA and its
# runtime state under CHAT_ENGINE_RUN. Before dockerd starts, the host's state
# (the docker0 link, iptables/nftables rules, net.ipv4.ip_forward) is recorded;
# `stop` puts back exactly what differs.
set -o errexit -o nounset -o pipefail

data_dir=${CHAT_ENGINE_DATA:-/var/lib/chat-compose-engine}
run_dir=${CHAT_ENGINE_RUN:-/run/chat-compose-engine}
cache_dir=${CHAT_ENGINE_CACHE:-/var/cache/chat-compose}
base_image=${BASE_IMAGE:-debian:trixie-slim}
debian_suite=${DEBIAN_SUITE:-trixie}
debian_mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Rebuild the cached root filesystem after this many days: Debian's point
# releases and security updates land in the mirror, not in an old tarball.
base_max_age_days=${BASE_MAX_AGE_DAYS:-30}

socket=$run_dir/docker.sock
pid_file=$run_dir/dockerd.pid
before_dir=$run_dir/host-before
private_host=unix://$socket

log() { echo "engine: $*" >&2; }
die() { echo "engine: error: $*" >&2; exit 1; }

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi
}

# --- install -------------------------------------------------------------------

compose_available() {
  docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null
}

install_tools() {
  local packages=()
  command -v dockerd >/dev/null || packages+=(docker.io)
  compose_available || packages+=(docker-compose)
  command -v debootstrap >/dev/null || packages+=(debootstrap)
  command -v nft >/dev/null || packages+=(nftables)
  ((${#packages[@]})) || return 0
  log "installing ${packages[*]}"
  # Debian's invoke-rc.d asks policy-rc.d whether to start a service; 101 is "no":
  # the package must not start a system-wide dockerd beside the private one.
  local policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    trap 'as_root rm -f "$policy"' EXIT  # `install` is all this process does
  fi
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
}

# --- the engine ------------------------------------------------------------------

answers() { timeout 10 docker --host "$1" version >/dev/null 2>&1; }

# The dockerd PID recorded at start, if that process still runs (start time matches).
private_pid() {
  local pid started
  [[ -r $pid_file.ours ]] || return 1
  read -r pid started <"$pid_file.ours" || return 1
  [[ $(start_time "$pid") == "$started" ]] || return 1
  echo "$pid"
}

# Clock ticks since boot at which the process started: tells a PID from its reuse.
# Nothing for a process that has exited (a zombie waiting for init to reap it).
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  local fields
  read -r -a fields <<<"$stat"
  [[ ${fields[0]} == Z ]] || echo "${fields[19]}"
}

start_engine() {
  if private_pid >/dev/null; then
    answers "$private_host" || die "the private dockerd runs but does not answer; see $data_dir/dockerd.log"
    log "using the private engine started earlier (pid $(private_pid))"
    echo "$private_host"
    return
  fi
  local existing=${DOCKER_HOST:-unix:///var/run/docker.sock}
  if answers "$existing"; then
    log "using the running engine at $existing"
    echo "$existing"
    return
  fi
  [[ $(id -u) == 0 ]] || die "no Docker engine answers at $existing, and starting one needs root"
  command -v dockerd >/dev/null || die "dockerd is not installed: run \`$0 install\`"

  mkdir -p "$run_dir" "$data_dir"
  record_host_state
  log "starting a private dockerd (data $data_dir, socket $socket)"
  # Its own session: stopping it by PID group also reaches its containerd.
  setsid dockerd --data-root "$data_dir/docker" --exec-root "$run_dir/exec" \
    --pidfile "$pid_file" --host "$private_host" \
    >>"$data_dir/dockerd.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid $(start_time "$pid")" >"$pid_file.ours"
  local deadline=$((SECONDS + 60))
  until answers "$private_host"; do
    if ! private_pid >/dev/null; then
      tail -n 20 "$data_dir/dockerd.log" >&2
      restore_host_state
      die "dockerd exited during start-up"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$data_dir/dockerd.log" >&2
      stop_engine
      die "dockerd did not answer within 60s"
    fi
    sleep 0.5
  done
  # dockerd's own pid file names the process that serves the socket: record that one.
  pid=$(<"$pid_file")
  echo "$pid $(start_time "$pid")" >"$pid_file.ours"
  log "private dockerd ready (pid $pid)"
  echo "$private_host"
}

stop_engine() {
  local pid
  if pid=$(private_pid); then
    log "stopping the private dockerd (pid $pid)"
    # dockerd stops its containers (15 s grace each, in parallel) and its containerd.
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while private_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if private_pid >/dev/null; then
      log "dockerd still runs after 60s: killing its process group"
      kill -KILL -- "-$pid" 2>/dev/null || true
      sleep 1
    fi
  elif [[ ! -e $pid_file.ours ]]; then
    return 0  # not started by this script: not ours to stop
  fi
  # Also after a dockerd that died on its own: whatever it left is cleaned up here.
  kill_leftovers
  unmount_leftovers
  rm -f "$pid_file.ours"
  restore_host_state
}

# containerd and its shims outlive a killed dockerd, and a shim's container
# processes outlive the shim. Ours name our exec root on their command line, so
# each is found by that unique path; it and its descendants are stopped by PID.
kill_leftovers() {
  local proc pid cmdline victims=() children
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    # A process may exit between the listing and the read: no error for that.
    cmdline=$({ tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null) || continue
    if [[ $cmdline == *"$run_dir/exec/"* ]]; then
      log "stopping leftover process $pid: ${cmdline:0:120}"
      mapfile -t children < <(descendants "$pid")
      victims+=("$pid" "${children[@]}")
    fi
  done
  ((${#victims[@]})) || return 0
  kill -KILL "${victims[@]}" 2>/dev/null || true
  sleep 1
}

descendants() {
  local child
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$child"
    descendants "$child"
  done
}

# Container root filesystems and network namespaces stay mounted after a crash.
unmount_leftovers() {
  local mount_point
  while read -r mount_point; do
    log "unmounting $mount_point"
    umount --lazy "$mount_point" 2>/dev/null || true
  done < <(awk -v data="$data_dir/" -v run="$run_dir/" \
    'index($2, data) == 1 || index($2, run) == 1 {print $2}' /proc/mounts | sort -r)
}

# --- host state: what dockerd changes, recorded before and put back after ----------

iptables_tools() {
  local tool
  for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null && echo "$tool"
  done
  return 0
}

record_host_state() {
  rm -rf "$before_dir"
  mkdir -p "$before_dir"
  # nftables first: listing rules with iptables-nft creates the (empty) tables it lists.
  if command -v nft >/dev/null; then
    nft list tables 2>/dev/null | sort >"$before_dir/nft-tables" || true
  fi
  sysctl -n net.ipv4.ip_forward >"$before_dir/ip_forward"
  ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort >"$before_dir/links"
  local tool table
  for tool in $(iptables_tools); do
    for table in filter nat; do
      "$tool" -w 10 -t "$table" -S 2>/dev/null >"$before_dir/$tool.$table" || true
    done
  done
}

# delete_rule TOOL TABLE "-A CHAIN ARGS...": -S prints each rule as shell-quoted
# arguments; the same words with -D delete it.
delete_rule() {
  local tool=$1 table=$2 rule=$3
  eval "set -- ${rule/#-A/-D}"
  "$tool" -w 10 -t "$table" "$@" 2>/dev/null || log "could not delete: $tool -t $table $rule"
}

restore_host_state() {
  [[ -d $before_dir ]] || return 0
  local link
  # Links dockerd made (docker0, br-<network>, veth): gone with it, or removed here.
  for link in $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'); do
    if [[ $link =~ ^(docker0|br-[0-9a-f]{12}|veth[0-9a-f]+)$ ]] && ! grep -qxF "$link" "$before_dir/links"; then
      log "removing link $link"
      ip link delete "$link" 2>/dev/null || true
    fi
  done

  local tool table rule chain
  for tool in $(iptables_tools); do
    for table in filter nat; do
      local before=$before_dir/$tool.$table
      [[ -e $before ]] || : >"$before"
      # Rules first (a chain that is still referenced cannot be deleted), then chains.
      while IFS= read -r rule; do
        [[ $rule == -A\ * ]] || continue
        grep -qxF -- "$rule" "$before" && continue
        delete_rule "$tool" "$table" "$rule"
      done < <("$tool" -w 10 -t "$table" -S 2>/dev/null)
      while IFS= read -r chain; do
        [[ $chain == -N\ * ]] || continue
        grep -qxF -- "$chain" "$before" && continue
        "$tool" -w 10 -t "$table" -F "${chain#-N }" 2>/dev/null || true
      done < <("$tool" -w 10 -t "$table" -S 2>/dev/null)
      while IFS= read -r chain; do
        [[ $chain == -N\ * ]] || continue
        grep -qxF -- "$chain" "$before" && continue
        "$tool" -w 10 -t "$table" -X "${chain#-N }" 2>/dev/null || log "could not delete chain ${chain#-N }"
      done < <("$tool" -w 10 -t "$table" -S 2>/dev/null)
      # Built-in chains' policies (dockerd sets FORWARD to DROP when it turns on forwarding).
      local policy words
      while IFS= read -r policy; do
        [[ $policy == -P\ * ]] || continue
        "$tool" -w 10 -t "$table" -S 2>/dev/null | grep -qxF -- "$policy" && continue
        read -r -a words <<<"$policy"
        log "restoring $tool -t $table $policy"
        "$tool" -w 10 -t "$table" "${words[@]}" || true
      done <"$before"
    done
  done

  # iptables-nft creates whole nftables tables ("ip filter", "ip nat") the first time
  # it is used; with their rules gone they are empty: drop those that were not there.
  if command -v nft >/dev/null && [[ -e $before_dir/nft-tables ]]; then
    local family name
    while read -r _ family name; do
      grep -qxF "table $family $name" "$before_dir/nft-tables" && continue
      log "removing nftables table $family $name"
      nft delete table "$family" "$name" 2>/dev/null || log "could not delete nftables table $family $name"
    done < <(nft list tables 2>/dev/null)
  fi

  local forward
  forward=$(<"$before_dir/ip_forward")
  if [[ $(sysctl -n net.ipv4.ip_forward) != "$forward" ]]; then
    log "restoring net.ipv4.ip_forward=$forward"
    sysctl -q -w "net.ipv4.ip_forward=$forward"
  fi
  rm -rf "$before_dir"
}

# --- base image --------------------------------------------------------------------

# debian:trixie-slim as the registry would give it, built from Debian's mirror:
# a minbase debootstrap, with the official image's container tweaks (no service
# starts from package scripts, no docs/man pages/locales, apt lists not kept).
build_base_image() {
  if docker image inspect "$base_image" >/dev/null 2>&1; then
    log "$base_image present"
    return
  fi
  local tarball=$cache_dir/debian-$debian_suite-minbase.tar
  if [[ ! -s $tarball ]] || [[ -n $(find "$tarball" -mtime "+$base_max_age_days" 2>/dev/null) ]]; then
    make_rootfs_tarball "$tarball"
  else
    log "using the cached root filesystem $tarball"
  fi
  local imported=chat-rootfs:$debian_suite
  docker import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$imported" >/dev/null

  # This machine reaches PyPI only through a TLS-inspecting proxy whose CA is in
  # the host's bundle: the locally built base carries that bundle for pip. It is
  # not in any project Dockerfile; an official base image needs none of it.
  local context
  context=$(mktemp -d)
  cp /etc/ssl/certs/ca-certificates.crt "$context/host-ca-bundle.crt"
  cat >"$context/Dockerfile" <<EOF
FROM $imported
COPY host-ca-bundle.crt /usr/local/share/chat-host-ca/ca-bundle.crt
ENV PIP_CERT=/usr/local/share/chat-host-ca/ca-bundle.crt
EOF
  DOCKER_BUILDKIT=0 docker build --quiet --tag "$base_image" "$context" >/dev/null
  rm -rf "$context"
  docker image rm "$imported" >/dev/null
  log "built $base_image"
}

make_rootfs_tarball() {
  local tarball=$1 rootfs
  command -v debootstrap >/dev/null || die "debootstrap is not installed: run \`$0 install\`"
  mkdir -p "$cache_dir"
  rootfs=$(mktemp -d "$cache_dir/rootfs.XXXXXX")
  log "debootstrap --variant=minbase $debian_suite from $debian_mirror"
  debootstrap --variant=minbase "$debian_suite" "$rootfs" "$debian_mirror" >"$cache_dir/debootstrap.log" 2>&1 ||
    { tail -n 20 "$cache_dir/debootstrap.log" >&2; rm -rf "$rootfs"; die "debootstrap failed"; }

  printf '#!/bin/sh\n# Package scripts must not start services in an image build.\nexit 101\n' \
    >"$rootfs/usr/sbin/policy-rc.d"
  chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
# As in Debian's official slim images: no documentation, man pages or translations.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
// As in Debian's official images: downloaded packages are not kept in layers.
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  # The official image's sources: the release, its updates and its security fixes.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $debian_mirror
Suites: $debian_suite $debian_suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${debian_mirror%/debian}/debian-security
Suites: $debian_suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc \
    "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/var/log/*.log
  tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
  rm -rf "$rootfs"
  mv "$tarball.partial" "$tarball"
  log "cached $tarball ($(du -h "$tarball" | cut -f1))"
}

# --- Compose v2 -------------------------------------------------------------------------

# Debian 12 ships Compose 1.29 (docker-compose); Debian 13's docker-compose package is
# Compose v2, a Go binary that needs only libc. It is fetched with an apt state of its
# own (the host's mirror and keyring, suite trixie), so the host's sources stay as they
# are, and installed as a CLI plugin in a DOCKER_CONFIG directory of its own.
compose_v2() {
  local dir=$cache_dir/compose-v2
  local plugin=$dir/docker-config/cli-plugins/docker-compose
  if [[ ! -x $plugin ]]; then
    local apt=$dir/apt
    rm -rf "$apt" "$dir/unpacked"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources"
    : >"$apt/status"
    printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
      "$debian_mirror" /usr/share/keyrings/debian-archive-keyring.gpg >"$apt/sources/trixie.sources"
    local options=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=$apt/status"
      -o APT::Sandbox::User=root)
    log "fetching Compose v2 (Debian 13's docker-compose) into $dir"
    apt-get "${options[@]}" -qq update >&2
    (cd "$apt/cache/archives" && apt-get "${options[@]}" -qq download docker-compose >&2)
    dpkg-deb -x "$(compgen -G "$apt/cache/archives/docker-compose_*.deb")" "$dir/unpacked"
    install -D -m 0755 "$dir/unpacked/usr/libexec/docker/cli-plugins/docker-compose" "$plugin"
    rm -rf "$apt" "$dir/unpacked"
  fi
  echo "$dir/docker-config"
}

# --- main --------------------------------------------------------------------------

case ${1:-} in
  install) install_tools ;;
  start) start_engine ;;
  stop) stop_engine ;;
  base-image)
    export DOCKER_HOST=${DOCKER_HOST:-$private_host}
    build_base_image
    ;;
  compose-v2) compose_v2 ;;
  run)
    shift
    (($#)) || die "usage: $0 run COMMAND [ARGS...]"
    trap stop_engine EXIT
    DOCKER_HOST=$(start_engine)
    export DOCKER_HOST
    build_base_image
    "$@"
    ;;
  *)
    echo "usage: $0 install|start|stop|base-image|compose-v2|run COMMAND..." >&2
    exit 2
    ;;
esac
