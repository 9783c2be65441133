#!/usr/bin/env bash
# Builds the container images Cadenza runs and tests against, locally and without a registry:
#
#   cadenza/base-bookworm:<hash>        minimal Debian base (deploy/images/base/build.sh)
#   cadenza/fake-agent-server:<hash>    the scripted fake agent-server, also tagged :dev
#
# Each image is rebuilt only when its inputs change: the fake's tag is a hash of its Dockerfile,
# the fake's crate, the workspace manifest, Cargo.lock and the base image, so a second run
# with nothing changed only re-tags :dev. Idempotent; prints the image references on stdout.
#
# Needs Docker, cargo and (for the first base build) root or sudo. The fake lives in its own small
# crate, so its release build compiles only what it uses.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

repository=cadenza/fake-agent-server
dockerfile=deploy/images/fake-agent-server/Dockerfile
binary_name=cadenza-fake-agent-server
target_dir=${CARGO_TARGET_DIR:-$root/target}

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, may this user use it?)"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or not on PATH)"

started=$(date +%s)
base_image=$(deploy/images/base/build.sh) || die "building the base image failed"

# The inputs, each as "path  sha256", in a stable order; the base image reference stands for
# the base's own inputs.
inputs() {
  echo "base $base_image"
  {
    echo "$dockerfile"
    echo Cargo.toml
    echo Cargo.lock
    find crates/fake-agent-server -type f -not -path '*/tests/*'
  } | LC_ALL=C sort | while read -r path; do
    sha256sum "$path"
  done
}
hash=$(inputs | sha256sum | cut -c1-16)
image="$repository:$hash"

if docker image inspect "$image" >/dev/null 2>&1; then
  log "$image is up to date"
else
  log "building $binary_name (release)"
  cargo_started=$(date +%s)
  cargo build --release --locked -p cadenza-fake-agent-server --bin "$binary_name" >&2 ||
    die "cargo build failed; see the compiler output above"
  log "cargo build took $(($(date +%s) - cargo_started)) s"

  context=$(mktemp -d "${TMPDIR:-/tmp}/cadenza-image.XXXXXX")
  trap 'rm -rf "$context"' EXIT
  cp "$target_dir/release/$binary_name" "$context/"
  cp "$dockerfile" "$context/Dockerfile"

  log "docker build $image"
  # The classic builder: the images must build on engines without BuildKit.
  DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE_IMAGE=$base_image" \
    --label "org.opencontainers.image.title=$binary_name" \
    --label "io.cadenza.inputs-hash=$hash" \
    -t "$image" "$context" >/dev/null 2>"$context/build.log" || {
    cat "$context/build.log" >&2
    die "docker build failed"
  }

  # A binary linked against a newer glibc than the base image's fails only at run time; catch
  # it here, with the reason, rather than as a container that exits at once.
  if ! smoke=$(docker run --rm "$image" --version 2>&1); then
    docker rmi "$image" >/dev/null 2>&1 || true
    die "the image's binary does not run: $smoke (built on a newer system than the base image?)"
  fi
  log "built $image ($smoke)"
fi

docker tag "$image" "$repository:dev"
log "done in $(($(date +%s) - started)) s; $repository:dev is $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1000000}')"
echo "$base_image"
echo "$image"
echo "$repository:dev"
