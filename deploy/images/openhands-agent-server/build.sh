#!/usr/bin/env bash
# Builds a local image of the real OpenHands agent-server from PyPI, without any container
# registry: debootstrap a Debian trixie root filesystem (Python 3.13), install
# `openhands-agent-server` into a venv, and `docker import` it.
#
#   deploy/images/openhands-agent-server/build.sh    prints the image references
#
# Tags: cadenza/openhands-agent-server:<version> and :<version>-<hash>, where the hash covers this
# script (which pins the version and the package list), so the image is rebuilt exactly when the
# script changes; when the hashed tag exists nothing is done. Logs go to stderr, the references
# alone to stdout.
#
# The image mirrors the official one (ghcr.io/openhands/agent-server:<version>-python, still the
# production default) where Cadenza depends on it: user openhands 10001:10001, /workspace/project
# owned by it, conversations under /workspace/conversations, port 8000, tini as PID 1. It has no
# VSCode, browser or Docker engine, like the official `-minimal` flavour.
#
# Needs Docker and root (or sudo); installs debootstrap and Debian's archive keyring with apt-get
# when they are missing. Settings: CADENZA_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# TMPDIR for the scratch root filesystem (default /var/tmp). pip inside the build uses the host's
# CA bundle and index settings (PIP_CERT / PIP_INDEX_URL / PIP_EXTRA_INDEX_URL /
# PIP_TRUSTED_HOST / PIP_FIND_LINKS or the same keys in `pip config`), so it works behind a
# TLS-inspecting proxy or a private index.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repository=cadenza/openhands-agent-server
# 1.58.1 and later require a certifi newer than some package indexes serve; 1.58.0 installs
# cleanly with the openhands-sdk/tools of the same version.
version=1.58.0
suite=trixie
mirror=${CADENZA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# tmux, bash and git are what the agent's terminal tool and the server's git routes run; procps
# lets the terminal tool find and stop processes; curl is for the agent's own use.
packages=(python3 python3-venv git bash ca-certificates tmux curl procps tini passwd)
venv=/opt/oh
uid=10001

log() { printf '[agent-server-image] %s\n' "$*" >&2; }
die() { printf '[agent-server-image] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "root is needed for '$1' and sudo is not installed; run this script as root"
  fi
}

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, may this user use it?)"

hash=$(sha256sum "$here/build.sh" | cut -c1-16)
image="$repository:$version-$hash"

if docker image inspect "$image" >/dev/null 2>&1; then
  docker tag "$image" "$repository:$version"
  log "$image is up to date"
  echo "$image"
  echo "$repository:$version"
  exit 0
fi

# One pip setting from the environment, else from `pip config` (any scope), else empty.
host_pip_setting() {
  local env_name=$1 key=$2 value=${!1:-}
  if [ -z "$value" ] && command -v pip >/dev/null 2>&1; then
    value=$(pip config list 2>/dev/null |
      sed -n "s/^[^.]*\.$key='\(.*\)'\$/\1/p" | head -n 1) || true
  fi
  printf '%s' "$value"
}
ca_bundle=$(host_pip_setting PIP_CERT cert)
[ -n "$ca_bundle" ] || ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "the CA bundle pip should trust ($ca_bundle) does not exist"
index_url=$(host_pip_setting PIP_INDEX_URL index-url)
extra_index_url=$(host_pip_setting PIP_EXTRA_INDEX_URL extra-index-url)
trusted_host=$(host_pip_setting PIP_TRUSTED_HOST trusted-host)
find_links=$(host_pip_setting PIP_FIND_LINKS find-links)

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing and this is not an apt-based system; install it by hand"
  if [ $apt_updated -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  log "installing $1"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
[ -e "$keyring" ] || apt_install debian-archive-keyring
debootstrap_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap) || die "debootstrap not found after installing it"
[ -e "/usr/share/debootstrap/scripts/$suite" ] ||
  die "this debootstrap does not know $suite; upgrade debootstrap (and debian-archive-keyring)"

workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/cadenza-agent-server.XXXXXX")
rootfs="$workdir/rootfs"
cleanup() {
  # Never delete through a mount left behind by an interrupted step.
  for mount in proc sys dev/pts dev; do
    if mountpoint -q "$rootfs/$mount" 2>/dev/null; then as_root umount -l "$rootfs/$mount" || true; fi
  done
  as_root rm -rf --one-file-system "$workdir"
}
trap cleanup EXIT

started=$(date +%s)
log "debootstrap --variant=minbase $suite from $mirror (packages: ${packages[*]})"
include=$(IFS=,; echo "${packages[*]}")
if ! as_root "$debootstrap_bin" --variant=minbase --keyring="$keyring" --include="$include" \
  "$suite" "$rootfs" "$mirror" >"$workdir/debootstrap.log" 2>&1; then
  tail -n 30 "$workdir/debootstrap.log" >&2 || true
  [ -f "$rootfs/debootstrap/debootstrap.log" ] && as_root tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (see the log above)"
fi
log "debootstrap took $(($(date +%s) - started)) s"

in_root() { as_root chroot "$rootfs" "$@"; }

# pip in the chroot needs name resolution, /dev and /proc; all three are undone before import.
as_root cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
as_root mount -t proc proc "$rootfs/proc"
as_root mount --bind /dev "$rootfs/dev"

build_ca=/tmp/cadenza-build-ca-bundle.crt
as_root install -m 0644 "$ca_bundle" "$rootfs$build_ca"
# A clean environment: the host's own PIP_*/SSL_* variables name host paths. pip's truststore
# reads OpenSSL's default locations, so SSL_CERT_FILE must name the bundle as well as PIP_CERT.
pip_env=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
  PIP_CERT="$build_ca" SSL_CERT_FILE="$build_ca" REQUESTS_CA_BUNDLE="$build_ca"
  PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180)
[ -n "$index_url" ] && pip_env+=(PIP_INDEX_URL="$index_url")
[ -n "$extra_index_url" ] && pip_env+=(PIP_EXTRA_INDEX_URL="$extra_index_url")
[ -n "$trusted_host" ] && pip_env+=(PIP_TRUSTED_HOST="$trusted_host")
if [ -n "$find_links" ]; then
  if [ -d "$find_links" ]; then
    # A local wheel directory is copied in: the chroot cannot see the host's filesystem.
    if [ -n "$(ls -A "$find_links")" ]; then
      as_root cp -r "$find_links" "$rootfs/tmp/cadenza-find-links"
      pip_env+=(PIP_FIND_LINKS=/tmp/cadenza-find-links)
    fi
  else
    pip_env+=(PIP_FIND_LINKS="$find_links")
  fi
fi

pip_started=$(date +%s)
log "installing openhands-agent-server==$version into $venv ($(in_root /usr/bin/python3 --version))"
in_root env -i "${pip_env[@]}" python3 -m venv "$venv"
if ! in_root env -i "${pip_env[@]}" "$venv/bin/pip" install --quiet \
  "openhands-agent-server==$version" >"$workdir/pip.log" 2>&1; then
  tail -n 40 "$workdir/pip.log" >&2 || true
  die "pip install failed (see the log above)"
fi
log "pip install took $(($(date +%s) - pip_started)) s"

in_root groupadd --gid "$uid" openhands
in_root useradd --uid "$uid" --gid "$uid" --create-home --shell /bin/bash openhands
as_root mkdir -p "$rootfs/workspace/project"
as_root chown -R "$uid:$uid" "$rootfs/workspace"

# Everything only the build needed, and caches, goes before import: the proxy CA, the host's
# resolver, the wheel directory, apt's lists and archives, documentation.
as_root umount "$rootfs/dev" "$rootfs/proc"
as_root rm -rf "$rootfs$build_ca" "$rootfs/tmp/cadenza-find-links" "$rootfs/root/.cache"
as_root truncate -s 0 "$rootfs/etc/resolv.conf"
in_root apt-get clean
as_root find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
as_root find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
as_root rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/lintian/"* \
  "$rootfs/var/cache/apt/"* "$rootfs/var/lib/apt/lists/"* "$rootfs/var/log/"*.log "$rootfs/debootstrap"

log "importing $image"
# WORKDIR is /workspace, but every path the server would resolve relative to it is set absolute,
# so the layout is the official image's: a volume on /workspace keeps conversations, bash events
# and the project together.
as_root tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
  docker import \
    --change 'ENV PATH=/opt/oh/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV LC_ALL=C.UTF-8' \
    --change 'ENV OH_ENABLE_VSCODE=false' \
    --change 'ENV OH_PRELOAD_TOOLS=false' \
    --change 'ENV OH_ENABLE_BROWSER=false' \
    --change 'ENV LITELLM_LOCAL_MODEL_COST_MAP=True' \
    --change 'ENV OH_CONVERSATIONS_PATH=/workspace/conversations' \
    --change 'ENV OH_BASH_EVENTS_DIR=/workspace/bash_events' \
    --change 'ENV OH_WORKSPACE_PATH=/workspace/project' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change "LABEL org.opencontainers.image.title=openhands-agent-server" \
    --change "LABEL org.opencontainers.image.version=$version" \
    --change "LABEL io.cadenza.inputs-hash=$hash" \
    --change "USER $uid:$uid" \
    --change 'WORKDIR /workspace' \
    --change 'EXPOSE 8000' \
    --change "ENTRYPOINT [\"/usr/bin/tini\", \"--\", \"$venv/bin/agent-server\"]" \
    --change 'CMD ["--host", "0.0.0.0", "--port", "8000"]' \
    --message "debootstrap --variant=minbase $suite + ${packages[*]} + openhands-agent-server==$version" \
    - "$image" >/dev/null

# With the image's own environment: without LITELLM_LOCAL_MODEL_COST_MAP, for one, importing the
# server tries the network and can fail.
if ! smoke=$(docker run --rm --entrypoint "$venv/bin/python" "$image" \
  -c 'import importlib.metadata as m, sys; print(m.version("openhands-agent-server"), sys.version.split()[0])' 2>&1) ||
  ! help=$(docker run --rm "$image" --help 2>&1); then
  docker rmi "$image" >/dev/null 2>&1 || true
  die "the image's agent-server does not start: ${help:-$smoke}"
fi
docker tag "$image" "$repository:$version"
size=$(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1000000}')
log "built $image in $(($(date +%s) - started)) s ($size; agent-server and Python: $smoke)"
echo "$image"
echo "$repository:$version"
