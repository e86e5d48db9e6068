#!/usr/bin/env bash
# Build the image and run the compose stack end to end in a real Docker daemon (see deploy/smoke.py for what is
# adapted to a machine without a registry or a bridge network, and what is checked). Fails loudly on any step.
#   BASE_IMAGE   the Dockerfile's base (default: local/python:bookworm when that image exists, else the official one)
#   IMAGE        the tag to build (default catalog-sync:smoke)
set -euo pipefail
cd "$(dirname "$0")/.."

docker info >/dev/null 2>&1 || { echo "smoke: FAILED: no Docker daemon answers" >&2; exit 1; }
command -v docker-compose >/dev/null || { echo "smoke: FAILED: docker-compose is not installed" >&2; exit 1; }
IMAGE=${IMAGE:-catalog-sync:smoke}
if [ -z "${BASE_IMAGE:-}" ] && docker image inspect local/python:bookworm >/dev/null 2>&1; then
  BASE_IMAGE=local/python:bookworm
fi
if [ "${BASE_IMAGE:-}" = local/python:bookworm ]; then
  # That image (local-docker.sh) is imported from a debootstrap directory whose root is mode 0700, so a non-root
  # user reaches no file, and a `RUN chmod` cannot change the root of an image. Re-imported from a container's
  # export, which leaves the root out (0755 then); official bases need nothing of the kind.
  if ! docker image inspect local/python:bookworm-rootfix >/dev/null 2>&1; then
    container=$(docker create local/python:bookworm /bin/true)
    docker export "$container" | docker import -c 'ENV LANG=C.UTF-8' - local/python:bookworm-rootfix >/dev/null
    docker rm "$container" >/dev/null
  fi
  BASE_IMAGE=local/python:bookworm-rootfix
fi
build_args=()
[ -n "${BASE_IMAGE:-}" ] && build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

started=$(date +%s)
echo "smoke: building $IMAGE${BASE_IMAGE:+ from $BASE_IMAGE}"
docker build --quiet --network host "${build_args[@]}" -t "$IMAGE" -f deploy/Dockerfile . 
echo "smoke: image built in $(( $(date +%s) - started ))s: $(docker image inspect -f '{{.Size}}' "$IMAGE") bytes"
docker run --rm --network host "$IMAGE" --help >/dev/null
echo "smoke: runs as user $(docker run --rm --network host --entrypoint id "$IMAGE" -u)"

PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" deploy/smoke.py "$IMAGE"
echo "smoke: all steps passed in $(( $(date +%s) - started ))s"
