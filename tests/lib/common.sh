# shellcheck shell=bash
# tests/lib/common.sh: what the rig scripts (tests/, benches/) share. Source it, do not run it:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"     # from tests/rig/, tests/image/, ...
#
# It sets `checkout` (the repository's root) and defines:
#   find_deskd debug|release      the deskd binary to use (the one rule, below)
#   private_deskd SRC             a copy of SRC the rig can see, safe from a rebuild meanwhile
#   seed_data_disk FILE IMAGE [SIZE]  an ext4 data disk whose images/ offers IMAGE as the default template
#   require_tools TOOL:PACKAGE... fail naming the packages of the missing tools
#   ensure_tools TOOL:PACKAGE...  the same, but install them first when run as root with apt
#   install_packages PACKAGE...   install them when run as root with apt, else fail naming them
#   lib_die MESSAGE               print "<script>: MESSAGE" and exit ${lib_exit:-1}
# Messages start with the calling script's name ($lib_name, default its basename).

checkout=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lib_name=${lib_name:-$(basename "$0")}

lib_die() {
    echo "$lib_name: $*" >&2
    exit "${lib_exit:-1}"
}

# The deskd binary, by one rule for every script:
#   1. $DESKD, if set (an error if it is not an executable file: a name given on purpose that is
#      wrong must not quietly fall back to another build);
#   2. otherwise the PROFILE build cargo makes: ${CARGO_TARGET_DIR:-<checkout>/target}/PROFILE/deskd.
#      Tests use `debug` (what `make test` builds), benchmarks and `make run` use `release`.
# Nothing is built here: the Makefile's targets build first, and a missing binary is an error that
# says which cargo command makes it. Prints an absolute path (the rig runs it at the same path).
find_deskd() {
    local profile=${1:?find_deskd needs debug or release} path target
    if [ -n "${DESKD:-}" ]; then
        path=$DESKD
        if [ ! -f "$path" ] || [ ! -x "$path" ]; then lib_die "DESKD=$path is not an executable file"; fi
    else
        target=${CARGO_TARGET_DIR:-$checkout/target}
        case "$target" in /*) ;; *) target=$checkout/$target ;; esac
        path=$target/$profile/deskd
        if [ ! -x "$path" ]; then
            local build="cargo build --bin deskd"
            [ "$profile" = release ] && build="cargo build --release --bin deskd"
            lib_die "no deskd at $path: build it with \`$build\` (or name one with DESKD=PATH)"
        fi
    fi
    (cd "$(dirname "$path")" && echo "$(pwd)/$(basename "$path")")
}

# A private copy of the binary SRC under <checkout>/target/rig/ (the rig sees the checkout, not
# this host's /tmp): a rebuild during a long run must not change what a daemon spawns as
# `deskd vmm` (a half-written binary crashes). Prints its path; the caller removes it.
private_deskd() {
    local src=${1:?private_deskd needs a binary} dir=$checkout/target/rig
    mkdir -p "$dir"
    cp "$src" "$dir/deskd-$$"
    echo "$dir/deskd-$$"
}

# An ext4 image FILE (sparse, SIZE default 32G) for `tests/rig/run --data-disk`, whose
# images/system/desktop/1.0.0 is a symbolic link to the built image folder IMAGE (images/build.sh
# output): the template computers get by default. The rig sees this host's root read-only at the
# same paths, so the 1-2 GB image is not copied.
seed_data_disk() {
    local file=${1:?seed_data_disk needs a file} image=${2:?seed_data_disk needs an image folder} size=${3:-32G}
    local seed
    [ -f "$image/manifest.json" ] || lib_die "no built image in $image (no manifest.json)"
    image=$(cd "$image" && pwd)
    seed=$(mktemp -d)
    mkdir -p "$seed/images/system/desktop"
    ln -s "$image" "$seed/images/system/desktop/1.0.0"
    rm -f "$file"
    truncate -s "$size" "$file"
    mkfs.ext4 -q -F -d "$seed" "$file" || { rm -rf "$seed"; lib_die "mkfs.ext4 failed on $file"; }
    rm -rf "$seed"
}

# The packages whose tools are missing, from TOOL:PACKAGE pairs (TOOL is looked up on PATH; a
# TOOL with a slash is a file that must exist).
lib_missing_packages() {
    local pair tool
    for pair in "$@"; do
        tool=${pair%%:*}
        case "$tool" in
        */*) [ -e "$tool" ] && continue ;;
        *) command -v "$tool" >/dev/null 2>&1 && continue ;;
        esac
        echo "${pair#*:}"
    done | awk '!seen[$0]++'
}

require_tools() {
    local missing
    missing=$(lib_missing_packages "$@" | tr '\n' ' ')
    [ -z "$missing" ] || lib_die "missing packages: ${missing% } (as root on Debian/Ubuntu: apt-get install ${missing% }; tests/install-deps installs them all)"
}

# Installs PACKAGES when run as root on Debian/Ubuntu; otherwise fails naming them.
install_packages() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "$lib_name: installing $*" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 ||
            { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2; } ||
            lib_die "could not install $*"
    else
        lib_die "missing packages: $* (as root on Debian/Ubuntu: apt-get install $*; tests/install-deps installs them all)"
    fi
}

ensure_tools() {
    local -a missing
    mapfile -t missing < <(lib_missing_packages "$@")
    install_packages "${missing[@]+"${missing[@]}"}"
    require_tools "$@"
}
