#!/usr/bin/env bash
# One-command setup for a fresh clone: a project venv (.venv), then run the app or the tests.
#
#   scripts/dev.sh run     install kernelscope into .venv and serve it on http://127.0.0.1:8000
#   scripts/dev.sh test    install kernelscope with its test extra, make sure Debian's chromium,
#                          redis-server and postgresql are there (apt-get, as root or through
#                          sudo), run the whole test suite
#   scripts/dev.sh check   only the house checks: ruff, ruff format, import contracts, mypy
#   scripts/dev.sh setup [test]   only the install step
#
# The Makefile's `make run` / `make test` call this. Re-runs skip the install when
# pyproject.toml has not changed. PYTHON picks the interpreter (default python3.11,
# else python3); VENV the environment's folder (default .venv); extra arguments
# after `test` go to pytest.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"   # the browser the e2e tests drive

log() { printf '[kernelscope] %s\n' "$*" >&2; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then echo "$candidate"; return; fi
  done
  log "no Python found: install Python 3.11 or newer"; exit 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else return 1
  fi
}

setup() {
  local extra="${1:-}" stamp="$VENV/.installed${1:+-$1}"
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ -x "$VENV/bin/kernelscope" ]; then
    return 0
  fi
  local python
  python="$(pick_python)"
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "$("$python" --version 2>&1) is too old: kernelscope needs Python 3.11 or newer (set PYTHON=...)"
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $("$python" --version 2>&1)"
    if ! "$python" -m venv "$VENV"; then
      # Debian's python3 ships venv (ensurepip) in a separate package.
      rm -rf "$VENV"
      command -v apt-get >/dev/null 2>&1 || { log "cannot create a venv with $python"; exit 1; }
      log "installing Debian's python3-venv"
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends python3-venv >/dev/null \
        || { log "could not install python3-venv (need root or sudo)"; exit 1; }
      "$python" -m venv "$VENV"
    fi
  fi
  log "installing kernelscope${extra:+ with its $extra extra} into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install --quiet -e ".${extra:+[$extra]}"
  touch "$stamp"
}

# What the tests start for real: Debian's chromium (the e2e tests), redis-server and PostgreSQL
# (the distributed-mode tests start their own servers on loopback ports, data in a temp folder).
# Each is installed with apt-get only when missing.
ensure_test_services() {
  local missing=()
  [ -x "$CHROMIUM" ] || missing+=(chromium fonts-dejavu-core)
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "missing for the tests: ${missing[*]}: installing them with apt-get"
  if ! command -v apt-get >/dev/null 2>&1; then
    log "no apt-get here: install ${missing[*]}, then run again"; exit 1
  fi
  as_root apt-get update -qq \
    && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
         "${missing[@]}" >/dev/null \
    || { log "could not install ${missing[*]} (need root or sudo): install them, then run again"; exit 1; }
  # Debian starts the packaged services at install; the tests start their own instances.
  as_root service redis-server stop >/dev/null 2>&1 || true
  as_root service postgresql stop >/dev/null 2>&1 || true
}

# The house checks (issue 17): lint, format, import contracts, types. Their configuration
# lives in pyproject.toml. Each runs even when one before it failed, so one pass shows all.
run_checks() {
  local status=0
  log "ruff check";          "$VENV/bin/ruff" check . || status=1
  log "ruff format --check"; "$VENV/bin/ruff" format --check --quiet . || status=1
  log "lint-imports";        "$VENV/bin/lint-imports" --no-cache || status=1
  log "mypy engine app";     "$VENV/bin/mypy" || status=1
  [ "$status" -eq 0 ] && log "house checks passed" || log "FAILED: house checks (see above)"
  return "$status"
}

run_tests() {
  local status=0 checks=0
  run_checks || checks=1
  "$VENV/bin/python" -m pytest "$@" || status=$?
  if [ "$status" -eq 5 ]; then
    log "FAILED: pytest collected no tests (exit code 5); the suite must not be empty"
    exit 1
  fi
  if [ "$status" -eq 0 ] && [ "$checks" -ne 0 ]; then status=1; fi
  exit "$status"
}

command="${1:-}"
shift || true
case "$command" in
  setup) setup "${1:-}" ;;
  run) setup; exec "$VENV/bin/kernelscope" serve "$@" ;;
  test) setup test; ensure_test_services; run_tests "$@" ;;
  check) setup test; run_checks ;;
  *) echo "usage: scripts/dev.sh run | test [pytest args] | check | setup [test]" >&2; exit 2 ;;
esac
