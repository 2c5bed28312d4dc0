# Shared by the image scripts: progress, error reporting, hashing, safe removal, chroot mounts.
# Sourced by build.sh; expects LOG, TOTAL_PHASES, BUILD_START.

PHASE_NAME="start"
PHASE_NUM=0
PHASE_START=$(date +%s)
STEP_NAME=""
MOUNTED_ROOT=""

info() { echo "    $*"; }

# phase N NAME: announce a phase and how long the previous one took.
phase() {
    local now
    now=$(date +%s)
    if [ "$PHASE_NUM" -gt 0 ]; then
        info "($PHASE_NAME: $((now - PHASE_START))s)"
    fi
    PHASE_NUM=$1
    PHASE_NAME=$2
    PHASE_START=$now
    STEP_NAME=""
    echo "==> [$1/$TOTAL_PHASES] $2   (+$((now - BUILD_START))s)"
    echo "==> [$1/$TOTAL_PHASES] $2" >> "$LOG"
}

# step DESCRIPTION COMMAND...: run a command with its output in the log; on failure say which step
# of which phase broke, with the log's last lines, and stop.
step() {
    STEP_NAME=$1
    shift
    info "$STEP_NAME"
    echo "--- $STEP_NAME: $*" >> "$LOG"
    local rc=0
    "$@" >> "$LOG" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "'$STEP_NAME' exited with status $rc"
    fi
    STEP_NAME=""
}

fail() {
    trap - ERR
    {
        echo
        echo "image build FAILED in phase $PHASE_NUM ($PHASE_NAME)${STEP_NAME:+, step '$STEP_NAME'}: $1"
        if [ -s "$LOG" ]; then
            echo "--- last lines of $LOG ---"
            tail -n 25 "$LOG"
            echo "--- end of log excerpt ---"
        fi
    } >&2
    exit 1
}

on_error() {
    fail "command '$2' (line $1 of the image scripts) exited with status $3"
}

# hash_files DIR PATH...: one sha256 over the names and contents of the files under PATH... (relative
# to DIR), in a stable order. Build outputs and documentation do not count.
hash_files() {
    local dir=$1
    shift
    (
        cd "$dir"
        find "$@" -type f ! -path '*/target/*' ! -name '*.md' ! -name '*.swp' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum
        # Modes matter too (an executable bit lost breaks a unit).
        find "$@" -type f ! -path '*/target/*' ! -name '*.md' ! -name '*.swp' -printf '%m %p\n' | LC_ALL=C sort
    ) | sha256sum | cut -d' ' -f1
}

# rm_tree DIR: remove a build tree, but never through a mount point (a chroot whose /dev is still
# bound would otherwise take the host's /dev with it).
rm_tree() {
    local dir=$1
    [ -e "$dir" ] || return 0
    unmount_under "$dir"
    if findmnt -rn -o TARGET | grep -q "^$dir/"; then
        fail "refusing to delete $dir: something is still mounted below it (see findmnt)"
    fi
    rm -rf --one-file-system "$dir"
}

unmount_under() {
    local dir=$1 target
    # Deepest first.
    { findmnt -rn -o TARGET | grep "^$dir/" || true; } | sort -r | while read -r target; do
        umount "$target" 2>/dev/null || umount -l "$target"
    done
}

# mount_chroot ROOT: what apt and maintainer scripts need inside a chroot.
mount_chroot() {
    local root=$1
    MOUNTED_ROOT=$root
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
}

cleanup_mounts() {
    if [ -n "$MOUNTED_ROOT" ]; then
        unmount_under "$MOUNTED_ROOT"
        MOUNTED_ROOT=""
    fi
}

umount_chroot() {
    cleanup_mounts
}

# in_chroot ROOT COMMAND...: run a command in the image with a quiet, non-interactive apt.
in_chroot() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}

# ensure_host_tools: install what the build needs on a Debian/Ubuntu host, or say what is missing.
ensure_host_tools() {
    local missing=() tool pkg
    for pair in debootstrap:debootstrap mkfs.ext4:e2fsprogs e2fsck:e2fsprogs python3:python3 \
        strip:binutils objdump:binutils flock:util-linux findmnt:util-linux; do
        tool=${pair%%:*}
        pkg=${pair#*:}
        command -v "$tool" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    if [ ${#missing[@]} -gt 0 ]; then
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        if command -v apt-get >/dev/null 2>&1; then
            step "apt-get install ${missing[*]}" \
                env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
        else
            fail "missing host packages: ${missing[*]} (this script installs them itself only on Debian/Ubuntu)"
        fi
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        fail "cargo is not on PATH: the guest agent is built from this workspace (install Rust, or run with sudo -E / a root PATH that has cargo)"
    fi
    info "debootstrap $(dpkg-query -W -f '${Version}' debootstrap 2>/dev/null || echo '?'), $(mkfs.ext4 -V 2>&1 | sed -n 1p), $(cargo --version)"
}

human_size() {
    numfmt --to=iec-i --suffix=B --format='%.1f' "$1"
}
