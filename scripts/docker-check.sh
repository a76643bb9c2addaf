#!/usr/bin/env bash
# Docker check: build the project's unmodified Dockerfile and run the image for real.
#
# 1. installs Debian's docker.io if dockerd is missing (root, or through sudo);
# 2. starts its own dockerd in the background (private data root, socket, pidfile
#    and bridge, host firewall untouched), so it never collides with another engine;
# 3. makes the python:3.11-slim base image with scripts/build-base-image.sh when the
#    engine lacks it (no image registry is reachable here; the stand-in is cached);
# 4. builds the Dockerfile, runs the container published on 127.0.0.1 only, waits for
#    /healthz, starts a short run over the API, reads its latest snapshot, waits for the
#    run to complete and checks PID 1 is dumb-init and no zombie is left, checks the
#    container runs as a non-root user and that its HEALTHCHECK reports healthy;
# 5. stops the container and dockerd by their ids/PIDs, whatever happened.
# When dockerd cannot run on this machine it says so loudly and exits non-zero.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE_DIR="/run/kernelscope-docker"
DATA_ROOT="/var/lib/kernelscope-docker"
SOCKET="$STATE_DIR/docker.sock"
PIDFILE="$STATE_DIR/dockerd.pid"
DOCKERD_LOG="$STATE_DIR/dockerd.log"
BRIDGE="ksdocker0"
BRIDGE_ADDR="172.29.117.1/24"
IMAGE="kernelscope:check"
RUN_BODY='{"steps": 30, "snapshot_every": 10}'
export DOCKER_HOST="unix://$SOCKET"

CONTAINER=""
DOCKERD_PID=""
STARTED_AT=$SECONDS

log() { printf '[docker-check %4ss] %s\n' "$((SECONDS - STARTED_AT))" "$*" >&2; }

loud_failure() {
  printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n' >&2
  printf '!!! DOCKER CHECK FAILED: %s\n' "$*" >&2
  printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n' >&2
  exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else loud_failure "need root or sudo to run: $*"
  fi
}

cleanup() {
  local status=$?
  if [ -n "$CONTAINER" ]; then
    if [ "$status" -ne 0 ]; then
      log "container logs (last 40 lines):"
      "$DOCKER" logs --tail 40 "$CONTAINER" >&2 2>&1 || true
    fi
    "$DOCKER" rm --force "$CONTAINER" >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping dockerd (pid $DOCKERD_PID)"
    as_root kill -TERM "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 40); do
      [ -e "/proc/$DOCKERD_PID" ] || break
      sleep 0.5
    done
    if [ -e "/proc/$DOCKERD_PID" ]; then as_root kill -KILL "$DOCKERD_PID" || true; fi
    # dockerd leaves its private mounts behind (data root bound on itself, network namespace).
    for mount_point in "$STATE_DIR/exec/netns/default" "$DATA_ROOT"; do
      if mountpoint -q "$mount_point" 2>/dev/null; then as_root umount "$mount_point" || true; fi
    done
  fi
  if command -v ip >/dev/null 2>&1 && ip link show "$BRIDGE" >/dev/null 2>&1; then
    as_root ip link delete "$BRIDGE" 2>/dev/null || true
  fi
  exit "$status"
}
trap cleanup EXIT

install_docker() {
  if [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ]; then return 0; fi
  log "installing Debian's docker.io"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io iproute2 >/dev/null || loud_failure "could not install docker.io with apt-get"
}

start_dockerd() {
  as_root mkdir -p "$STATE_DIR" "$DATA_ROOT"
  if [ -f "$PIDFILE" ]; then
    local old_pid
    old_pid="$(cat "$PIDFILE")"
    if [ "$(cat "/proc/$old_pid/comm" 2>/dev/null)" = "dockerd" ]; then
      log "a dockerd from an earlier check is still running (pid $old_pid): stopping it"
      as_root kill -TERM "$old_pid" || true
      for _ in $(seq 1 40); do [ -e "/proc/$old_pid" ] || break; sleep 0.5; done
    fi
    as_root rm -f "$PIDFILE"
  fi
  local bridge_args=()
  if command -v ip >/dev/null 2>&1; then
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
      as_root ip link add "$BRIDGE" type bridge \
        && as_root ip addr add "$BRIDGE_ADDR" dev "$BRIDGE" \
        && as_root ip link set "$BRIDGE" up \
        || loud_failure "cannot create the network bridge $BRIDGE for dockerd"
    fi
    bridge_args=(--bridge "$BRIDGE")
  fi
  log "starting dockerd (data root $DATA_ROOT, socket $SOCKET)"
  as_root /usr/sbin/dockerd \
    --data-root "$DATA_ROOT" \
    --exec-root "$STATE_DIR/exec" \
    --pidfile "$PIDFILE" \
    --host "$DOCKER_HOST" \
    --iptables=false --ip-masq=false \
    "${bridge_args[@]}" \
    >"$DOCKERD_LOG" 2>&1 </dev/null &
  DOCKERD_PID=$!
  local launcher_pid=$DOCKERD_PID
  for _ in $(seq 1 120); do
    if "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 && [ -s "$PIDFILE" ]; then
      DOCKERD_PID="$(cat "$PIDFILE")"   # dockerd's own PID ($! may be a wrapping shell or sudo)
      log "dockerd $("$DOCKER" version --format '{{.Server.Version}}') is up (pid $DOCKERD_PID)"
      return 0
    fi
    if ! kill -0 "$launcher_pid" 2>/dev/null; then break; fi
    sleep 0.5
  done
  tail -25 "$DOCKERD_LOG" >&2 || true
  loud_failure "dockerd cannot run on this machine (see its log above: $DOCKERD_LOG)"
}

http() {  # http METHOD URL [JSON_BODY] -> prints "STATUS BODY"
  python3 - "$@" <<'EOF'
import sys, urllib.request, urllib.error
method, url = sys.argv[1], sys.argv[2]
body = sys.argv[3].encode() if len(sys.argv) > 3 else None
request = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
except OSError as error:
    print(0, error)
EOF
}

json_field() {  # json_field EXPRESSION <<< JSON   (EXPRESSION uses `d`, the parsed JSON)
  python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"
}

check_running_image() {
  local port base status body run_id steps snapshot
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  base="http://127.0.0.1:$port"
  CONTAINER="$("$DOCKER" run --detach --publish "127.0.0.1:$port:8000" "$IMAGE")"
  log "container ${CONTAINER:0:12} (pid $("$DOCKER" inspect --format '{{.State.Pid}}' "$CONTAINER")) published on $base"

  for _ in $(seq 1 180); do
    read -r status body < <(http GET "$base/healthz")
    [ "$status" = "200" ] && break
    [ "$("$DOCKER" inspect --format '{{.State.Running}}' "$CONTAINER")" = "true" ] \
      || loud_failure "the container exited before answering /healthz"
    sleep 0.5
  done
  [ "$status" = "200" ] || loud_failure "/healthz never answered 200 (last: $status $body)"
  log "GET /healthz -> $status $body"

  read -r status body < <(http POST "$base/api/runs" "$RUN_BODY")
  [ "$status" = "201" ] || loud_failure "POST /api/runs answered $status: $body"
  run_id="$(json_field 'd["id"]' <<<"$body")"
  log "POST /api/runs $RUN_BODY -> 201, run $run_id"

  steps="[]"
  for _ in $(seq 1 240); do
    read -r status body < <(http GET "$base/api/runs/$run_id/snapshots")
    if [ "$status" = "200" ]; then
      steps="$(json_field 'd.get("steps", []) if isinstance(d, dict) else d' <<<"$body")"
      [ "$steps" != "[]" ] && break
    fi
    sleep 0.5
  done
  [ "$steps" != "[]" ] || loud_failure "run $run_id made no snapshot (last: $status $body)"
  log "GET /api/runs/$run_id/snapshots -> steps $steps"

  read -r status body < <(http GET "$base/api/runs/$run_id/snapshots/latest")
  [ "$status" = "200" ] || loud_failure "GET snapshots/latest answered $status: ${body:0:300}"
  snapshot="$(json_field '"step %s, %d layers, first kernel shape %s" % (d["step"], len(d["layers"]), d["layers"][0]["shape"])' <<<"$body")"
  log "GET /api/runs/$run_id/snapshots/latest -> $snapshot"

  local run_status="" init zombies
  for _ in $(seq 1 240); do
    read -r status body < <(http GET "$base/api/runs/$run_id")
    run_status="$(json_field 'd.get("status")' <<<"$body")"
    [ "$run_status" = "completed" ] && break
    sleep 0.5
  done
  [ "$run_status" = "completed" ] || loud_failure "run $run_id did not complete (last: $status $body)"
  init="$("$DOCKER" exec "$CONTAINER" cat /proc/1/comm)"
  [ "$init" = "dumb-init" ] || loud_failure "PID 1 is '$init', not dumb-init"
  sleep 1  # a finished run's processes have exited; none may be left as a zombie
  zombies="$("$DOCKER" exec "$CONTAINER" python -c 'import glob; print(sum(open(p).read().rsplit(")", 1)[1].split()[0] == "Z" for p in glob.glob("/proc/[0-9]*/stat")))')"
  [ "$zombies" = "0" ] || loud_failure "$zombies zombie processes in the container after run $run_id completed"
  log "run $run_id completed; PID 1 is $init, no zombie processes"

  local uid
  uid="$("$DOCKER" exec "$CONTAINER" id -u)"
  [ "$uid" != "0" ] || loud_failure "the container runs as root"
  "$DOCKER" exec "$CONTAINER" test -w /data || loud_failure "/data is not writable by uid $uid"
  log "runs as uid $uid, /data is writable"

  local health=""
  for _ in $(seq 1 120); do
    health="$("$DOCKER" inspect --format '{{.State.Health.Status}}' "$CONTAINER")"
    [ "$health" = "starting" ] || break
    sleep 0.5
  done
  [ "$health" = "healthy" ] || loud_failure "the HEALTHCHECK says '$health'"
  log "HEALTHCHECK -> $health"

  log "stopping container ${CONTAINER:0:12}"
  "$DOCKER" stop --time 15 "$CONTAINER" >/dev/null
  # 143 = 128 + SIGTERM: uvicorn re-raises the signal once its graceful shutdown is done
  log "container exit code $("$DOCKER" inspect --format '{{.State.ExitCode}}' "$CONTAINER")"
}

install_docker
DOCKER=/usr/bin/docker   # Debian's client, matching Debian's dockerd
start_dockerd

stage_start=$SECONDS
DOCKER_BIN="$DOCKER" bash scripts/build-base-image.sh || loud_failure "could not make the python:3.11-slim base image"
log "base image ready in $((SECONDS - stage_start))s"

stage_start=$SECONDS
# --network host: the build's pip reaches PyPI through the host's network (this
# private engine gives its bridge no outbound NAT). DOCKER_BUILDKIT=0: the plain
# builder that ships with Debian's engine; the Dockerfile needs nothing more.
DOCKER_BUILDKIT=0 "$DOCKER" build --network host --tag "$IMAGE" . >"$STATE_DIR/build.log" 2>&1 \
  || { tail -40 "$STATE_DIR/build.log" >&2; loud_failure "docker build failed"; }
log "image $IMAGE built in $((SECONDS - stage_start))s, size $("$DOCKER" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

stage_start=$SECONDS
check_running_image
log "container checked in $((SECONDS - stage_start))s"
log "DOCKER CHECK PASSED in $((SECONDS - STARTED_AT))s"
