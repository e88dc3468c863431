#!/usr/bin/env bash
# Make sure a Docker engine answers, for the docker deployment's end-to-end test (tests/e2e/test_docker.py).
# Installs Debian's docker.io (and debootstrap, which builds the test's stand-in base image) when dockerd is
# missing, and starts dockerd in the background when nothing answers; its log goes to $HARVEST_DOCKERD_LOG.
#
# Never fails `make test`: where no engine can run (no root, no apt, a kernel without overlay or cgroups) it
# says why on stderr and in $HARVEST_DOCKER_UNAVAILABLE_FILE, and the test skips with that reason.
set -uo pipefail
LOG="${HARVEST_DOCKERD_LOG:-/var/log/harvest-dockerd.log}"
REASON_FILE="${HARVEST_DOCKER_UNAVAILABLE_FILE:-/tmp/harvest-docker-unavailable}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
rm -f "$REASON_FILE"

unavailable() {
  echo ">> no Docker engine: $1 (the docker deployment's end-to-end test will skip)" >&2
  echo "$1" >"$REASON_FILE"
  exit 0
}

docker info >/dev/null 2>&1 && exit 0

if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || unavailable "dockerd is not installed and there is no apt-get to install it"
  if [ -n "$SUDO" ] && ! sudo -n true 2>/dev/null; then
    unavailable "dockerd is not installed and installing docker.io needs root (sudo asks for a password)"
  fi
  echo ">> installing Debian docker.io and debootstrap" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io debootstrap >/dev/null \
    || unavailable "apt-get install docker.io debootstrap failed"
fi

if ! docker info >/dev/null 2>&1; then
  echo ">> starting dockerd (log: $LOG)" >&2
  # setsid: dockerd outlives this script and make's process group; it stays up for later runs.
  $SUDO setsid dockerd >>"$LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
fi
docker info >/dev/null 2>&1 || unavailable "dockerd did not answer within 30 s: $(tail -n 3 "$LOG" 2>/dev/null | tr '\n' ' ')"
