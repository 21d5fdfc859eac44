#!/usr/bin/env bash
# A three-node Docker Swarm on one machine, for `make swarm-test`: Docker-in-Docker nodes
# on the private engine compose/engine.sh provides (measured: shared/containers.md).
#
#   swarm.sh run CMD...       engine, images, nodes, swarm; CMD with SWARM_STATE exported;
#                             then, whatever happens, every node, network and volume removed,
#                             and the engine stopped if this started it
#   swarm.sh deploy TOPOLOGY  the stack (per-node or central PgBouncer: swarm/stack.py),
#                             waited for until every service has converged
#   swarm.sh wait             until every service has converged again (after a fault)
#   swarm.sh remove-stack     `docker stack rm`, waited for until its services are gone
#   swarm.sh up | down        the nodes and the swarm alone (`run` calls both)
#
# Nodes: node1 (manager; labels chat.database and chat.app: PostgreSQL, Redis, the central
# PgBouncer, an app replica), node2 and node3 (workers, chat.app). Images reach the nodes
# by `docker save | docker load`: there is no registry. State (the node list, secrets,
# the Compose and stack files) lives in SWARM_STATE, root's only, removed by `down`.
# TEST_STACK_OFFSET moves names and subnets, as for the other test stacks.
set -o errexit -o nounset -o pipefail

project=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$project"  # python -m swarm.stack
engine=$project/compose/engine.sh
offset=${TEST_STACK_OFFSET:-0}
state=${SWARM_STATE:-/run/chat-swarm${offset#0}}
prefix=chatswarm${offset#0}
stack=chat
node_count=3
node_image=chat-swarm/node:local
node_network=$prefix
# The nodes' own network, and the pool Swarm takes overlay subnets from: apart from each
# other and from docker-compose.yml's fixed subnets (10.231.x), which the overlays keep.
node_subnet_prefix=10.238.$((offset % 200))
node_subnet=$node_subnet_prefix.0/24
overlay_pool=10.240.0.0/16
# Images built from docker-compose.yml that the stack runs (swarm/stack.py's services).
images=(postgres pgbouncer redis app proxy loadtest)
python=${SWARM_PYTHON:-$project/.venv/bin/python}
# Shared with the Compose tests: one session at a time uses the engine and its docker0.
lock_file=/run/lock/chat-compose-test.lock
lock_wait_s=1200
converge_wait_s=300

log() { echo "swarm: $*" >&2; }
die() { echo "swarm: error: $*" >&2; exit 1; }

node_names() { seq -f 'node%g' 1 "$node_count"; }
container() { echo "$prefix-$1"; }
# on NODE ARGS...: the docker CLI of that node's engine.
on() { local node=$1; shift; docker exec "$(container "$node")" docker "$@"; }
manager() { on node1 "$@"; }

# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or fail naming WHAT.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what: not within ${seconds}s"
    sleep 1
  done
}

# --- images ---------------------------------------------------------------------------

compose() {
  DOCKER_CONFIG=$("$engine" compose-v2) docker compose --project-directory "$project" \
    --file "$project/docker-compose.yml" --env-file "$state/compose.env" --profile loadtest "$@"
}

# .env.example's values, and what the swarm changes: the host names clients use (the
# nodes' addresses, through their proxies) and the proxy published on every address
# of a node (Swarm's host-mode ports cannot name one).
write_compose_env() {
  local addresses
  addresses=$(awk '{print $3}' "$state/nodes" | paste -sd, -)
  cp "$project/.env.example" "$state/compose.env"
  {
    echo "DJANGO_ALLOWED_HOSTS=localhost,127.0.0.1,app,$addresses"
    echo "PROXY_PUBLISH=8443"
  } >>"$state/compose.env"
}

build_images() {
  log "building ${images[*]} (docker compose build) and the node image"
  local services=(postgres pgbouncer redis app proxy locust-worker)
  compose build --quiet "${services[@]}" >&2
  DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE_IMAGE=${BASE_IMAGE:-debian:trixie-slim}" \
    --file "$project/swarm/node/Dockerfile" --tag "$node_image" "$project/swarm/node" >/dev/null
}

load_images() {
  local node image tags
  for node in $(node_names); do
    tags=()
    for image in "${images[@]}"; do
      # PostgreSQL and Redis run on node1 only (chat.database): no copy elsewhere.
      [[ $node == node1 || ! $image =~ ^(postgres|redis)$ ]] || continue
      tags+=("chat-stack/$image:${CHAT_IMAGE_TAG:-local}")
    done
    log "loading ${#tags[@]} images into $node"
    docker save "${tags[@]}" | docker exec --interactive "$(container "$node")" docker load --quiet >/dev/null
  done
}

# --- nodes and the swarm ------------------------------------------------------------------

# The nodes, their containers and their addresses, one a line: what the tests read.
# Fixed addresses: a node stopped and started again (the tests do) comes back as the
# same swarm member, and clients find its proxy where it was.
write_node_list() {
  local node
  for node in $(node_names); do
    echo "$node $(container "$node") $node_subnet_prefix.$((10 + ${node#node}))"
  done >"$state/nodes"
}

start_nodes() {
  docker network create --subnet "$node_subnet" --label "chat-swarm=$prefix" "$node_network" >/dev/null
  local node name address shared
  while read -r node name address; do
    # node1 sees the project (the config files) and the state (secrets, the stack file,
    # results) at the same paths as here: its docker CLI reads what the stack file names.
    shared=()
    [[ $node != node1 ]] || shared=(--volume "$project:$project:ro" --volume "$state:$state")
    # Not --privileged: the sandbox's bounding set lacks CAP_SYS_RESOURCE, so everything
    # else instead (measured, shared/containers.md). /run a tmpfs: a node killed and
    # started again (the tests do) must not find its engine's old pid file there.
    docker run --detach --name "$name" --hostname "$node" --label "chat-swarm=$prefix" \
      --network "$node_network" --ip "$address" \
      --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
      --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
      --device-cgroup-rule 'a *:* rwm' --volume /sys/fs/cgroup:/sys/fs/cgroup:rw \
      --volume /lib/modules:/lib/modules:ro --tmpfs /run \
      "${shared[@]}" "$node_image" >/dev/null
  done <"$state/nodes"
  for node in $(node_names); do
    wait_for 60 "the engine inside $node did not answer" on "$node" version
  done
}

form_swarm() {
  local address token node
  address=$(awk '$1 == "node1" {print $3}' "$state/nodes")
  log "swarm init on node1 ($address)"
  manager swarm init --advertise-addr "$address" --default-addr-pool "$overlay_pool" >/dev/null
  token=$(manager swarm join-token --quiet worker)
  for node in $(node_names | tail -n +2); do
    on "$node" swarm join --token "$token" "$address:2377" >/dev/null
  done
  wait_for 60 "not every node joined the swarm as Ready" nodes_ready
  manager node update --label-add chat.database=true node1 >/dev/null
  for node in $(node_names); do
    manager node update --label-add chat.app=true "$node" >/dev/null
  done
}

nodes_ready() {
  [[ $(manager node ls --format '{{.Status}}' | grep -c '^Ready$') == "$node_count" ]]
}

# Made once, on this host, by the stack's own generator: the proxy's certificate names
# every node's address, PgBouncer's every PgBouncer service of either topology.
make_secrets() {
  local addresses pgbouncers=()
  addresses=$(awk '{print $1 "," $3}' "$state/nodes" | paste -sd, -)
  local topology
  for topology in per-node central; do
    pgbouncers+=("$("$python" -m swarm.stack pgbouncer-names --topology "$topology" \
      --app-nodes "$(node_names | paste -sd, -)")")
  done
  SECRETS_DIR=$state/secrets TLS_HOSTS_PROXY=$addresses \
    TLS_HOSTS_PGBOUNCER=$(IFS=,; echo "${pgbouncers[*]}") python3 "$project/secrets/generate.py"
}

up() {
  [[ ! -e $state/nodes ]] || die "$state/nodes exists: a swarm is up (or was not taken down): \`$0 down\`"
  mkdir --mode=0700 "$state"  # its parent is /run (or yours): the secrets go in here
  write_node_list
  write_compose_env
  build_images
  start_nodes
  load_images
  form_swarm
  make_secrets
  compose config --format json >"$state/compose.json"
  log "up: $(manager node ls --format '{{.Hostname}}' | paste -sd' ' -)"
}

down() {
  local ids
  mapfile -t ids < <(docker ps --all --quiet --filter "label=chat-swarm=$prefix")
  # --volumes: each node's /var/lib/docker (its images, containers, volumes, swarm state).
  ((${#ids[@]} == 0)) || docker rm --force --volumes "${ids[@]}" >/dev/null
  docker network rm "$node_network" >/dev/null 2>&1 || true
  rm -rf "$state"
  log "down: nodes, their volumes, the network and $state removed"
}

# --- the stack ----------------------------------------------------------------------------

deploy() {
  local topology=${1:?usage: $0 deploy per-node|central}
  "$python" -m swarm.stack generate --compose-json "$state/compose.json" --topology "$topology" \
    --app-nodes "$(node_names | paste -sd, -)" --secrets-dir "$state/secrets" --load-workers \
    >"$state/stack.json"
  log "deploying the $topology topology"
  # --resolve-image never: the images are on the nodes, and there is no registry to ask.
  manager stack deploy --resolve-image never --prune --compose-file "$state/stack.json" "$stack" >&2
  wait_converged
}

wait_converged() {
  local deadline=$((SECONDS + converge_wait_s))
  until converged; do
    if ((SECONDS >= deadline)); then
      manager service ls >&2
      manager stack ps --no-trunc --format '{{.Name}} {{.Node}} {{.CurrentState}} {{.Error}}' "$stack" >&2
      die "the stack did not converge within ${converge_wait_s}s"
    fi
    sleep 2
  done
  log "converged: $(manager service ls --format '{{.Name}} {{.Replicas}}' | paste -sd, -)"
}

# Every service runs as many healthy tasks as it wants (a task counts once healthy),
# and the migration job has completed.
converged() {
  local replicas running wanted
  while read -r replicas; do
    if [[ $replicas =~ ^[0-9]+/[0-9]+\ \(([0-9]+)/([0-9]+)\ completed\)$ ]]; then
      [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]] || return 1
    else
      running=${replicas%%/*} wanted=${replicas#*/}
      [[ $running == "$wanted" && $wanted != 0 ]] || return 1
    fi
  done < <(manager service ls --filter "label=com.docker.stack.namespace=$stack" --format '{{.Replicas}}')
}

remove_stack() {
  manager stack rm "$stack" >&2
  wait_for 120 "the stack's services and networks were not removed" stack_gone
}

stack_gone() {
  [[ -z $(manager service ls --quiet --filter "label=com.docker.stack.namespace=$stack") ]] &&
    [[ -z $(manager network ls --quiet --filter "label=com.docker.stack.namespace=$stack") ]]
}

# --- run ----------------------------------------------------------------------------------

run() {
  (($#)) || die "usage: $0 run COMMAND [ARGS...]"
  exec {lock}>"$lock_file"
  flock --timeout "$lock_wait_s" "$lock" || die "another test session held $lock_file for ${lock_wait_s}s"
  "$engine" install
  trap 'down || log "teardown incomplete: see above"; "$engine" stop' EXIT
  DOCKER_HOST=$("$engine" start)
  export DOCKER_HOST
  "$engine" base-image
  down  # whatever an interrupted session left under these names
  up
  SWARM_STATE=$state "$@"
}

case ${1:-} in
  run) shift; run "$@" ;;
  up) up ;;
  down) down ;;
  deploy) shift; deploy "$@" ;;
  wait) wait_converged ;;
  remove-stack) remove_stack ;;
  *)
    echo "usage: $0 run COMMAND...|up|down|deploy per-node|central|wait|remove-stack" >&2
    exit 2
    ;;
esac
