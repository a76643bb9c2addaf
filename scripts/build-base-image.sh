#!/usr/bin/env bash
# Stand-in for the python:3.11-slim base image, for machines that reach no image registry.
#
# Builds a Debian bookworm root filesystem with debootstrap (minbase), installs
# python3, pip and venv in a chroot, copies in this machine's extra CA certificates
# and pip configuration (so pip inside reaches PyPI the same way it does here),
# links /usr/local/bin/python and pip as the official image has them, and imports
# the result into the Docker engine named by DOCKER_HOST as python:3.11-slim.
#
# The root filesystem tarball is cached in $KERNELSCOPE_CACHE (default
# /var/cache/kernelscope) and the import is skipped when the image already exists.
# Usage: scripts/build-base-image.sh            build the tarball, import it if an engine answers
#        scripts/build-base-image.sh --tarball  only build the cached tarball
set -euo pipefail

IMAGE_NAME="python:3.11-slim"
CACHE_DIR="${KERNELSCOPE_CACHE:-/var/cache/kernelscope}"
TARBALL="$CACHE_DIR/python-3.11-slim-standin.tar"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DOCKER_BIN="${DOCKER_BIN:-$(command -v docker || true)}"

log() { printf '[build-base-image] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else log "need root (or sudo) for: $*"; exit 1
  fi
}

image_exists() {
  [ -n "$DOCKER_BIN" ] && "$DOCKER_BIN" image inspect "$IMAGE_NAME" >/dev/null 2>&1
}

engine_answers() {
  [ -n "$DOCKER_BIN" ] && "$DOCKER_BIN" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

build_tarball() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  fi
  local root
  root="$(mktemp -d /var/tmp/kernelscope-rootfs.XXXXXX)"
  log "debootstrap --variant=minbase bookworm into $root"
  as_root debootstrap --variant=minbase bookworm "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
    || { tail -30 "$root.log" >&2; exit 1; }

  as_root cp /etc/resolv.conf "$root/etc/resolv.conf"
  log "installing python3, python3-pip, python3-venv in the chroot"
  as_root chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv ca-certificates \
    >>"$root.log" 2>&1 || { tail -30 "$root.log" >&2; exit 1; }

  # This machine's extra CA certificates and pip configuration, so pip in the image reaches PyPI.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    as_root cp -r /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
  fi
  as_root chroot "$root" update-ca-certificates >>"$root.log" 2>&1
  if [ -f /etc/pip.conf ]; then as_root cp /etc/pip.conf "$root/etc/pip.conf"; fi
  if [ -d /etc/xdg/pip ]; then
    as_root mkdir -p "$root/etc/xdg"
    as_root cp -r /etc/xdg/pip "$root/etc/xdg/pip"
  fi

  # Look like the official image: python and pip on /usr/local/bin, pip allowed outside a venv.
  as_root ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  as_root ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  as_root ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  as_root ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip3"
  as_root rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
  as_root chroot "$root" apt-get clean
  as_root rm -rf "$root"/var/lib/apt/lists/* "$root/etc/resolv.conf"
  as_root touch "$root/etc/resolv.conf"

  as_root mkdir -p "$CACHE_DIR"
  as_root tar --numeric-owner -C "$root" -cf "$TARBALL.part" .
  as_root mv "$TARBALL.part" "$TARBALL"
  as_root rm -rf "$root" "$root.log"
  log "cached root filesystem: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
}

import_tarball() {
  log "importing $TARBALL as $IMAGE_NAME"
  "$DOCKER_BIN" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$IMAGE_NAME" >/dev/null
}

main() {
  if [ "${1:-}" != "--tarball" ] && image_exists; then
    log "$IMAGE_NAME already present in the engine, nothing to do"
    return 0
  fi
  if [ -s "$TARBALL" ]; then
    log "using cached $TARBALL"
  else
    build_tarball
  fi
  if [ "${1:-}" = "--tarball" ]; then return 0; fi
  if ! engine_answers; then
    log "no Docker engine answers at ${DOCKER_HOST:-the default socket}; cannot import $IMAGE_NAME"
    exit 1
  fi
  import_tarball
  log "$IMAGE_NAME ready"
}

main "$@"
