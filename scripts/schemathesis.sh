#!/usr/bin/env bash
# Property-based API test: schemathesis with --checks all against /openapi.json
# of a live uvicorn on loopback, with a fresh data directory and a bounded
# number of examples per operation (so it takes a minute or two).
#   scripts/schemathesis.sh [MAX_EXAMPLES]      (default 10; env PYTHON picks the interpreter)
# Exits non-zero on any schemathesis failure. The server and the training
# processes it started are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
MAX_EXAMPLES="${1:-10}"
DATA_DIR="$(mktemp -d /tmp/kernelscope-schemathesis.XXXXXX)"
PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PYTHON="$(cd "$(dirname "$(command -v "$PYTHON")")" && pwd)/$(basename "$PYTHON")"   # absolute: we cd below
SCHEMATHESIS="$(dirname "$PYTHON")/schemathesis"
[ -x "$SCHEMATHESIS" ] || SCHEMATHESIS="$(command -v schemathesis)"

# One run trains at a time and few may queue: the fuzzer starts many runs.
KERNELSCOPE_DATA="$DATA_DIR" KERNELSCOPE_MAX_RUNS=1 KERNELSCOPE_MAX_QUEUED=4 \
  setsid "$PYTHON" -m uvicorn app.main:create_app --factory --host 127.0.0.1 --port "$PORT" \
  --log-level warning >"$DATA_DIR/server.log" 2>&1 &
SERVER_PID=$!
cleanup() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true   # its session: leftover training processes
  rm -rf "$DATA_DIR"
}
trap cleanup EXIT

for _ in $(seq 100); do
  if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/healthz', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 0.2
done

status=0
CONFIG="$PWD/scripts/schemathesis.toml"
# Run from the data directory: schemathesis keeps its cache (.schemathesis/) in the working directory.
(cd "$DATA_DIR" && "$SCHEMATHESIS" --config-file "$CONFIG" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks all --max-examples "$MAX_EXAMPLES" --workers 1 --no-color) || status=$?
if grep -q "Traceback" "$DATA_DIR/server.log"; then
  echo "[schemathesis] the server logged an exception:"
  cat "$DATA_DIR/server.log"
  status=1
fi
exit "$status"
