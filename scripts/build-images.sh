#!/usr/bin/env bash
# Builds the container images Cadenza runs and tests against, locally and without a registry:
#
#   cadenza/base-bookworm:<hash>                 minimal Debian base (deploy/images/base/build.sh)
#   cadenza/git-helper:dev                       the base, as the worker's clone helper
#   cadenza/fake-agent-server:<hash>             the scripted fake agent-server, also tagged :dev
#   cadenza/fake-llm:<hash>                      the scripted OpenAI-compatible LLM, also :dev
#   cadenza/nats:<hash>                          Debian's nats-server, for the chaos tests'
#                                                three-node cluster, also :dev
#   cadenza/openhands-agent-server:1.58.0        the real agent-server from PyPI
#                                                (deploy/images/openhands-agent-server/build.sh)
#
# Each image is rebuilt only when its inputs change: a Rust image's tag is a hash of its
# Dockerfile, its crate, the workspace manifest, Cargo.lock and the base image, another image's
# a hash of its directory under deploy/images/ and the base image, so a second run with nothing
# changed only re-tags :dev. Idempotent; prints the image references on stdout.
#
# The real agent-server image takes a few minutes to build the first time (it installs the
# server with pip); the conformance tests need it. CADENZA_SKIP_REAL_AGENT_IMAGE=1 skips it for
# quick local runs.
#
# Needs Docker, cargo and (for the first base builds) root or sudo. The fakes live in their own
# small crates, so their release builds compile only what they use.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

target_dir=${CARGO_TARGET_DIR:-$root/target}

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, may this user use it?)"
command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or not on PATH)"

started=$(date +%s)
base_image=$(deploy/images/base/build.sh) || die "building the base image failed"
echo "$base_image"
# The base has git, sh and chown: all the worker's clone helper needs (CADENZA_GIT_IMAGE).
docker tag "$base_image" cadenza/git-helper:dev
echo cadenza/git-helper:dev

contexts=()
trap 'for context in "${contexts[@]}"; do rm -rf "$context"; done' EXIT

# Builds the image of one binary of one workspace crate on the base image, unless an image
# with the same inputs exists; tags it :dev and prints both references.
#   build_rust_image <repository> <dockerfile> <crate dir> <package> <binary>
build_rust_image() {
  local repository=$1 dockerfile=$2 crate_dir=$3 package=$4 binary_name=$5
  # The inputs, each as "path  sha256", in a stable order; the base image reference stands
  # for the base's own inputs.
  local hash
  hash=$(
    {
      echo "base $base_image"
      {
        echo "$dockerfile"
        echo Cargo.toml
        echo Cargo.lock
        find "$crate_dir" -type f -not -path '*/tests/*'
      } | LC_ALL=C sort | while read -r path; do
        sha256sum "$path"
      done
    } | sha256sum | cut -c1-16
  )
  local image="$repository:$hash"

  if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image is up to date"
  else
    log "building $binary_name (release)"
    local cargo_started
    cargo_started=$(date +%s)
    cargo build --release --locked -p "$package" --bin "$binary_name" >&2 ||
      die "cargo build failed; see the compiler output above"
    log "cargo build took $(($(date +%s) - cargo_started)) s"

    local context
    context=$(mktemp -d "${TMPDIR:-/tmp}/cadenza-image.XXXXXX")
    contexts+=("$context")
    cp "$target_dir/release/$binary_name" "$context/"
    cp "$dockerfile" "$context/Dockerfile"

    log "docker build $image"
    # The classic builder: the images must build on engines without BuildKit.
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE_IMAGE=$base_image" \
      --label "org.opencontainers.image.title=$binary_name" \
      --label "io.cadenza.inputs-hash=$hash" \
      -t "$image" "$context" >/dev/null 2>"$context/build.log" || {
      cat "$context/build.log" >&2
      die "docker build of $image failed"
    }

    # A binary linked against a newer glibc than the base image's fails only at run time;
    # catch it here, with the reason, rather than as a container that exits at once.
    local smoke
    if ! smoke=$(docker run --rm "$image" --version 2>&1); then
      docker rmi "$image" >/dev/null 2>&1 || true
      die "the image's binary does not run: $smoke (built on a newer system than the base image?)"
    fi
    log "built $image ($smoke)"
  fi

  docker tag "$image" "$repository:dev"
  log "$repository:dev is $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1000000}')"
  echo "$image"
  echo "$repository:dev"
}

# Builds an image from a directory under deploy/images/ (its Dockerfile and whatever it
# copies) on the base image, unless an image with the same inputs exists; tags it :dev and
# prints both references. The smoke test runs the image with <smoke args> (e.g. --version).
#   build_context_image <repository> <directory> <smoke args...>
build_context_image() {
  local repository=$1 directory=$2
  shift 2
  local hash
  hash=$(
    {
      echo "base $base_image"
      find "$directory" -type f | LC_ALL=C sort | while read -r path; do
        sha256sum "$path"
      done
    } | sha256sum | cut -c1-16
  )
  local image="$repository:$hash"

  if docker image inspect "$image" >/dev/null 2>&1; then
    log "$image is up to date"
  else
    local context
    context=$(mktemp -d "${TMPDIR:-/tmp}/cadenza-image.XXXXXX")
    contexts+=("$context")
    cp -r "$directory/." "$context/"

    log "docker build $image"
    DOCKER_BUILDKIT=0 docker build --quiet --build-arg "BASE_IMAGE=$base_image" \
      --label "org.opencontainers.image.title=${repository#*/}" \
      --label "io.cadenza.inputs-hash=$hash" \
      -t "$image" "$context" >/dev/null 2>"$context/build.log" || {
      cat "$context/build.log" >&2
      die "docker build of $image failed"
    }

    local smoke
    if ! smoke=$(docker run --rm "$image" "$@" 2>&1); then
      docker rmi "$image" >/dev/null 2>&1 || true
      die "the image does not run: $smoke"
    fi
    log "built $image ($smoke)"
  fi

  docker tag "$image" "$repository:dev"
  log "$repository:dev is $(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1000000}')"
  echo "$image"
  echo "$repository:dev"
}

build_rust_image cadenza/fake-agent-server deploy/images/fake-agent-server/Dockerfile \
  crates/fake-agent-server cadenza-fake-agent-server cadenza-fake-agent-server
build_rust_image cadenza/fake-llm deploy/images/fake-llm/Dockerfile \
  crates/fake-llm cadenza-fake-llm cadenza-fake-llm

build_context_image cadenza/nats deploy/images/nats --version

if [ "${CADENZA_SKIP_REAL_AGENT_IMAGE:-0}" = 1 ]; then
  log "skipping the real agent-server image (CADENZA_SKIP_REAL_AGENT_IMAGE=1); the conformance tests need it"
else
  deploy/images/openhands-agent-server/build.sh || die "building the real agent-server image failed"
fi

log "done in $(($(date +%s) - started)) s"
