#!/usr/bin/env bash
# Build the docker e2e test's images early, in the background, while the rest of the suite runs (make test starts
# it): the stand-in base (scripts/standin-python-image.sh) and harvest:latest from the Dockerfile. Cold, the two
# take minutes of mostly waiting on apt, debootstrap and pip; built here they overlap the other tests instead of
# lengthening the e2e worker's chain. tests/e2e/test_docker.py takes the same lock before its own `docker build`,
# so it waits for this one and then finds every layer cached (its build, smoke check included, still has to pass).
#
#   scripts/prebuild-images.sh &      # log: $HARVEST_PREBUILD_LOG; exits 0 at once where no engine answers
set -uo pipefail
cd "$(dirname "$0")/.."
LOCK="${HARVEST_DOCKER_BUILD_LOCK:-/tmp/harvest-docker-build.lock}"
LOG="${HARVEST_PREBUILD_LOG:-/tmp/harvest-prebuild.log}"
docker info >/dev/null 2>&1 || exit 0
exec 9>"$LOCK"
flock 9
{
  echo ">> $(date +%T) stand-in base"
  scripts/standin-python-image.sh || exit 1
  echo ">> $(date +%T) docker build harvest:latest"
  before="$(docker image inspect --format '{{.Id}}' harvest:latest 2>/dev/null || true)"
  docker build --network host -q -t harvest:latest . || exit 1
  after="$(docker image inspect --format '{{.Id}}' harvest:latest)"
  # the previous build's own layers: a rebuild per source change would pile up
  if [ -n "$before" ] && [ "$before" != "$after" ]; then docker image rm "$before" >/dev/null 2>&1 || true; fi
  echo ">> $(date +%T) done"
} >"$LOG" 2>&1
