#!/usr/bin/env bash
# Builds the minimal Debian bookworm base image Cadenza's agent images start FROM, without any
# registry: debootstrap a minbase root filesystem from Debian's mirror, add packages.txt, and
# `docker import` it.
#
#   deploy/images/base/build.sh      prints the image reference (cadenza/base-bookworm:<hash>)
#
# The tag is a hash of this script, packages.txt and the host's CA bundle (see below), so the
# image is rebuilt exactly when one of them changes; when the tag exists nothing is done. The
# image is also tagged :latest. Logs go to stderr, the reference alone to stdout.
#
# Needs Docker and root (or sudo); installs debootstrap and Debian's archive keyring with apt-get
# when they are missing. Settings: CADENZA_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# TMPDIR for the scratch root filesystem (default /var/tmp).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repository=cadenza/base-bookworm
suite=bookworm
mirror=${CADENZA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
host_ca_bundle=/etc/ssl/certs/ca-certificates.crt

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { printf '[base-image] error: %s\n' "$*" >&2; exit 1; }

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

mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/packages.txt" | grep -v '^$')
[ ${#packages[@]} -gt 0 ] || die "packages.txt lists no package"

# A TLS-inspecting proxy's CA lives in the host bundle and is copied into the image (for apt), so
# the bundle is an input of the image too.
tag=$(
  {
    cat "$here/build.sh" "$here/packages.txt"
    if [ -f "$host_ca_bundle" ]; then cat "$host_ca_bundle"; fi
  } | sha256sum | cut -c1-16
)
image="$repository:$tag"

if docker image inspect "$image" >/dev/null 2>&1; then
  docker tag "$image" "$repository:latest"
  log "$image is up to date"
  echo "$image"
  exit 0
fi

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
# debootstrap is in /usr/sbin, which a non-root PATH may lack.
debootstrap_bin=$(PATH="$PATH:/usr/sbin:/sbin" command -v debootstrap) || die "debootstrap not found after installing it"

workdir=$(mktemp -d "${TMPDIR:-/var/tmp}/cadenza-base.XXXXXX")
rootfs="$workdir/rootfs"
cleanup() {
  # Never delete through a mount left behind by an interrupted debootstrap.
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

if [ -f "$host_ca_bundle" ] && ! as_root cmp -s "$host_ca_bundle" "$rootfs/etc/ssl/certs/ca-certificates.crt"; then
  log "the host CA bundle differs from Debian's: apt in the image will trust the host's"
  as_root install -m 0644 "$host_ca_bundle" "$rootfs/usr/local/share/cadenza-host-ca-bundle.crt"
  echo 'Acquire::https::CAInfo "/usr/local/share/cadenza-host-ca-bundle.crt";' |
    as_root tee "$rootfs/etc/apt/apt.conf.d/90cadenza-host-ca" >/dev/null
fi

# Documentation, manuals and message catalogs are dead weight in a container (about a quarter of
# the image). As in Debian's slim images, dpkg is told to skip them in later installs too;
# copyright files stay.
as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/90cadenza-slim" >/dev/null <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
as_root find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
as_root find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
as_root find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
as_root rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/lintian/"* \
  "$rootfs/var/cache/apt/archives/"*.deb "$rootfs/var/lib/apt/lists/"* "$rootfs/debootstrap"

log "importing $image"
as_root tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV LC_ALL=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite + ${packages[*]}" \
    - "$image" >/dev/null
docker tag "$image" "$repository:latest"
log "built $image in $(($(date +%s) - started)) s ($(docker image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1000000}'))"
echo "$image"
