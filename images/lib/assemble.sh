# From a base tree and the agent binary to the image folder: kernel, initrd, rootfs, manifest.json.
# Expects REPO_DIR, IMAGES_DIR, CACHE_DIR, SLUG, IMAGE_NAME, IMAGE_VERSION, VARIANT, SUITE, KEY,
# INPUTS_DIGEST, SCRIPTS_DIGEST, AGENT_DIGEST, BUILD_START and lib/common.sh.

# The guest's C library (Debian 12): an agent linked against anything newer would not start.
GUEST_GLIBC=2.36
AGENT_BIN=""

# build_agent STAGING_DIR: cargo build the agent and leave a stripped copy in STAGING_DIR.
build_agent() {
    local staging=$1 built needed target
    step "cargo build --release -p deskd-agent" \
        env -C "$REPO_DIR" cargo build --release -p deskd-agent
    # Where cargo put it: $CARGO_TARGET_DIR (relative to the checkout) if set, as tests/lib/common.sh's
    # find_deskd has it.
    target=${CARGO_TARGET_DIR:-$REPO_DIR/target}
    case "$target" in /*) ;; *) target=$REPO_DIR/$target ;; esac
    built="$target/release/deskd-agent"
    [ -x "$built" ] || fail "cargo reported success but $built is missing"
    mkdir -p "$staging"
    AGENT_BIN="$staging/deskd-agent"
    strip -o "$AGENT_BIN" "$built"
    needed=$(objdump -T "$AGENT_BIN" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
    if [ -n "$needed" ] && [ "$(printf '%s\n%s\n' "$needed" "$GUEST_GLIBC" | sort -V | tail -1)" != "$GUEST_GLIBC" ]; then
        fail "deskd-agent needs glibc $needed but the guest (Debian 12) has $GUEST_GLIBC: build on a Debian 12 host"
    fi
    info "agent: $(human_size "$(stat -c %s "$AGENT_BIN")") stripped, needs glibc ${needed:-?}"
}

# assemble_image BASE_DIR OUT_DIR
assemble_image() {
    local base=$1 out=$2
    local root="$base/root"
    local work="$out.partial"
    rm_tree "$work"
    mkdir -p "$work"

    # The agent is the only file that differs between images built from one base.
    install -D -m 0755 "$AGENT_BIN" "$root/usr/local/bin/deskd-agent"

    cp "$base/kernel" "$work/kernel"
    cp "$base/initrd" "$work/initrd"

    # Room for the tree plus ext4's own metadata and some slack; the disk of every computer is grown
    # to its real size at boot, so this only needs to hold the image.
    local used_kib files size_mib inodes
    used_kib=$(du -s --block-size=1K "$root" | cut -f1)
    files=$(find "$root" -xdev | wc -l)
    size_mib=$(( (used_kib * 115 / 100 / 1024) + 256 ))
    size_mib=$(( (size_mib + 63) / 64 * 64 ))
    inodes=$(( files * 2 + 65536 ))
    step "mkfs.ext4 -d ($((used_kib / 1024)) MiB in $files files, image ${size_mib} MiB)" \
        mkfs.ext4 -q -F -L deskd-root -m 1 -N "$inodes" -d "$root" "$work/rootfs" "${size_mib}M"
    step "e2fsck -fn rootfs" e2fsck -fn "$work/rootfs"

    step "write manifest.json" write_manifest "$base" "$root" "$work"
    rm_tree "$out"
    mv "$work" "$out"
}

write_manifest() {
    local base=$1 root=$2 work=$3
    dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${db:Status-Abbrev}\t${Package}\t${Version}\n' \
        | awk -F'\t' '$1 ~ /^ii/ {print $2 "\t" $3}' > "$work/.packages.tsv"
    python3 - "$work" <<EOF
import hashlib, json, os, sys, time
work = sys.argv[1]

def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def file_entry(name):
    path = os.path.join(work, name)
    st = os.stat(path)
    return {"file": name, "bytes": st.st_size, "allocated_bytes": st.st_blocks * 512, "sha256": digest(path)}

packages = []
with open(os.path.join(work, ".packages.tsv")) as f:
    for line in f:
        name, version = line.rstrip("\n").split("\t")
        packages.append({"name": name, "version": version})

rootfs = file_entry("rootfs")
rootfs.update({"format": "ext4", "device": "/dev/vda", "grows_to_disk": True})
manifest = {
    "name": "$IMAGE_NAME",
    "version": "$IMAGE_VERSION",
    "ref": "$IMAGE_NAME@$IMAGE_VERSION",
    "variant": "$VARIANT",
    "key": "$KEY",
    "inputs": {
        "digest": "$INPUTS_DIGEST",
        "scripts_and_packages_sha256": "$SCRIPTS_DIGEST",
        "agent_source_sha256": "$AGENT_DIGEST",
        "debian_suite": "$SUITE",
    },
    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "kernel": dict(file_entry("kernel"), version="$(cat "$base/kernel-version")", package="linux-image-cloud-amd64"),
    "initrd": file_entry("initrd"),
    "rootfs": rootfs,
    "kernel_cmdline": "console=ttyS0 root=/dev/vda rw",
    "kernel_cmdline_params": {
        "deskd.resolution": "WIDTHxHEIGHTxDEPTH, depth 16 or 24, default 1280x720x24",
        "deskd.hostname": "the guest's host name (one DNS label)",
    },
    "agent": {
        "path": "/usr/local/bin/deskd-agent",
        "vsock_port": 1024,
        "user": "user",
        "sha256": digest("$root/usr/local/bin/deskd-agent"),
    },
    "user": {"name": "user", "uid": 1000, "home": "/home/user"},
    "packages": packages,
}
with open(os.path.join(work, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
EOF
    rm -f "$work/.packages.tsv"
}

# clean_stale_partials: half-built trees of this variant left by an interrupted build (we hold the
# variant's lock, so no build is using them).
clean_stale_partials() {
    local stale
    find "$CACHE_DIR" -maxdepth 1 -type d -regextype posix-extended \
        -regex ".*/(base-)?$SLUG-[0-9a-f]{16}\.partial" | while read -r stale; do
            info "removing $stale (left by an interrupted build)"
            rm_tree "$stale"
        done
}

# prune_cache: keep the newest two images and bases of this variant; they are 1-3 GB each.
prune_cache() {
    local kind old
    for kind in "$SLUG" "base-$SLUG"; do
        # Names are <kind>-<16 hex>: the pattern keeps desktop from matching desktop-minimal.
        find "$CACHE_DIR" -maxdepth 1 -type d -regextype posix-extended \
            -regex ".*/$kind-[0-9a-f]{16}" -printf '%T@ %p\n' \
            | sort -rn | tail -n +3 | cut -d' ' -f2- | while read -r old; do
                info "pruning old $old"
                rm_tree "$old"
            done
    done
}

print_summary() {
    local out=$1 elapsed
    elapsed=$(( $(date +%s) - BUILD_START ))
    info "($PHASE_NAME: $(( $(date +%s) - PHASE_START ))s)"
    python3 - "$out/manifest.json" "$elapsed" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
def h(n):
    for unit in ["B", "KiB", "MiB", "GiB"]:
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
print(f"image {m['ref']} (key {m['key']}, {len(m['packages'])} packages, kernel {m['kernel']['version']})")
print(f"  kernel {h(m['kernel']['bytes'])}, initrd {h(m['initrd']['bytes'])}, "
      f"rootfs {h(m['rootfs']['bytes'])} ({h(m['rootfs']['allocated_bytes'])} allocated)")
print(f"  built at {m['built_at']}; this run took {sys.argv[2]}s")
EOF
}
