#!/usr/bin/env bash
# Build a deskd guest image from Debian 12 packages: kernel, initrd, rootfs (ext4) and manifest.json.
#
#   images/build.sh [--variant desktop|minimal] [--install DATA_DIR] [--cache-dir DIR] [--force]
#
# Runs as root on Debian or Ubuntu. The result is cached in CACHE_DIR/<slug>-<key> (default
# /var/cache/deskd/images), where key is a hash of everything under images/, the variant and the
# agent's source; a second run with the same inputs does nothing. The expensive part (debootstrap and
# packages) is cached separately (base-<slug>-<key>), so a change to the agent alone costs a minute.
# The last line printed on success is the image folder (`--print-dir` prints only that).
set -eEuo pipefail   # -E: the ERR trap (which says what broke) also fires inside functions

IMAGES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGES_DIR/.." && pwd)
# shellcheck source=images/lib/common.sh
. "$IMAGES_DIR/lib/common.sh"
# shellcheck source=images/lib/base.sh
. "$IMAGES_DIR/lib/base.sh"
# shellcheck source=images/lib/assemble.sh
. "$IMAGES_DIR/lib/assemble.sh"

SUITE=bookworm
VARIANT=desktop
CACHE_DIR=${DESKD_IMAGE_CACHE:-/var/cache/deskd/images}
INSTALL_DATA_DIR=""
FORCE=0
PRINT_DIR_ONLY=0
MIRROR=${DESKD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DESKD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --variant) VARIANT=${2:?--variant needs desktop or minimal}; shift 2 ;;
        --variant=*) VARIANT=${1#*=}; shift ;;
        --install) INSTALL_DATA_DIR=${2:?--install needs the data directory, e.g. /var/lib/deskd}; shift 2 ;;
        --install=*) INSTALL_DATA_DIR=${1#*=}; shift ;;
        --cache-dir) CACHE_DIR=${2:?--cache-dir needs a directory}; shift 2 ;;
        --cache-dir=*) CACHE_DIR=${1#*=}; shift ;;
        --force) FORCE=1; shift ;;
        --print-dir) PRINT_DIR_ONLY=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "images/build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done

case "$VARIANT" in
    desktop) IMAGE_NAME=system/desktop; SLUG=desktop ;;
    minimal) IMAGE_NAME=system/desktop-minimal; SLUG=desktop-minimal ;;
    *) echo "images/build.sh: unknown variant '$VARIANT': use desktop (the default image) or minimal (no browser)" >&2; exit 2 ;;
esac
IMAGE_VERSION=$(tr -d ' \n' < "$IMAGES_DIR/VERSION")

if [ "$(id -u)" -ne 0 ]; then
    echo "images/build.sh must run as root (debootstrap, chroot and file ownership in the image need it)." >&2
    exit 2
fi

if [ "$PRINT_DIR_ONLY" -eq 1 ]; then
    exec 3>&1 1>&2   # progress to stderr, only the folder to stdout
else
    exec 3>&1
fi

BUILD_START=$(date +%s)
mkdir -p "$CACHE_DIR"
LOG="$CACHE_DIR/$SLUG-build.log"
: > "$LOG"
exec 9>"$CACHE_DIR/.$SLUG.lock"
if ! flock -n 9; then
    echo "another build of $SLUG holds $CACHE_DIR/.$SLUG.lock; waiting for it" >&2
    flock 9
fi
trap 'on_error $LINENO "$BASH_COMMAND" $?' ERR
trap 'cleanup_mounts' EXIT
TOTAL_PHASES=6

# ---------------------------------------------------------------------------------------------------
phase 1 "host build dependencies"
ensure_host_tools

# ---------------------------------------------------------------------------------------------------
phase 2 "inputs and cache key"
# The base tree depends only on what goes into it; the image on every script and the agent.
BASE_DIGEST=$(hash_files "$REPO_DIR" images/packages images/rootfs images/initramfs-modules \
    images/lib/common.sh images/lib/base.sh images/lib/configure-chroot.sh)
SCRIPTS_DIGEST=$(hash_files "$REPO_DIR" images)
AGENT_DIGEST=$(hash_files "$REPO_DIR" guest-agent Cargo.lock Cargo.toml)
BASE_KEY=$(printf '%s\n' "$BASE_DIGEST" "$VARIANT" "$SUITE" | sha256sum | cut -c1-16)
INPUTS_DIGEST=$(printf '%s\n' "$BASE_KEY" "$SCRIPTS_DIGEST" "$AGENT_DIGEST" | sha256sum | cut -d' ' -f1)
KEY=${INPUTS_DIGEST:0:16}
BASE_DIR="$CACHE_DIR/base-$SLUG-$BASE_KEY"
OUT_DIR="$CACHE_DIR/$SLUG-$KEY"
info "scripts and package lists: ${SCRIPTS_DIGEST:0:16}, agent source: ${AGENT_DIGEST:0:16}"
info "image $IMAGE_NAME@$IMAGE_VERSION key $KEY -> $OUT_DIR"

if [ "$FORCE" -eq 0 ] && [ -f "$OUT_DIR/manifest.json" ]; then
    info "up to date: inputs unchanged since the last build"
else
    [ "$FORCE" -eq 1 ] && rm_tree "$BASE_DIR" && rm_tree "$OUT_DIR"
    clean_stale_partials

    # -----------------------------------------------------------------------------------------------
    phase 3 "guest agent (cargo build --release -p deskd-agent)"
    build_agent "$CACHE_DIR/.agent-$SLUG"

    # -----------------------------------------------------------------------------------------------
    phase 4 "base system (debootstrap $SUITE, packages, configuration, kernel, initrd)"
    if [ -f "$BASE_DIR/done" ]; then
        info "reusing $BASE_DIR"
    else
        build_base "$BASE_DIR"
    fi

    # -----------------------------------------------------------------------------------------------
    phase 5 "assemble kernel, initrd, rootfs and manifest"
    assemble_image "$BASE_DIR" "$OUT_DIR"
    prune_cache
fi

# ---------------------------------------------------------------------------------------------------
phase 6 "install"
if [ -n "$INSTALL_DATA_DIR" ]; then
    step "install into $INSTALL_DATA_DIR" "$IMAGES_DIR/install.sh" "$OUT_DIR" "$INSTALL_DATA_DIR"
    info "installed as $INSTALL_DATA_DIR/images/$IMAGE_NAME/$IMAGE_VERSION"
else
    info "not installed (use --install DATA_DIR, or: images/install.sh $OUT_DIR /var/lib/deskd)"
fi

print_summary "$OUT_DIR"
echo "$OUT_DIR" >&3
