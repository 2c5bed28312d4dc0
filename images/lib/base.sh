# The base system of an image: everything but the agent binary, kept in CACHE_DIR/base-<slug>-<key>
# as root/ (the tree that becomes the rootfs), kernel, initrd and kernel-version.
# Expects IMAGES_DIR, SUITE, VARIANT, MIRROR, SECURITY_MIRROR and lib/common.sh.

# read_package_list FILE...: the package names in list files (comments and blank lines dropped).
read_package_list() {
    sed -e 's/#.*//' -e 's/[[:space:]]\+$//' -e '/^[[:space:]]*$/d' "$@"
}

build_base() {
    local base=$1
    local work="$base.partial"
    local root="$work/root"
    rm_tree "$work"
    mkdir -p "$work"

    step "debootstrap --variant=minbase $SUITE from $MIRROR" \
        debootstrap --variant=minbase --arch=amd64 --components=main \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$root" "$MIRROR"

    # Before any further package: dpkg path exclusions, and no service may start inside the chroot.
    step "copy images/rootfs into the tree" cp -a --no-preserve=ownership "$IMAGES_DIR/rootfs/." "$root/"
    cat > "$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"

    mount_chroot "$root"
    local packages
    mapfile -t packages < <(read_package_list "$IMAGES_DIR/packages/base.list" "$IMAGES_DIR/packages/$VARIANT.list")
    step "apt-get update" in_chroot "$root" apt-get update
    step "apt-get upgrade (security and point-release updates)" \
        in_chroot "$root" apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade
    step "apt-get install ${#packages[@]} packages (see images/packages/)" \
        in_chroot "$root" apt-get -y --no-install-recommends -o Dpkg::Options::=--force-confold \
        install "${packages[@]}"

    cp "$IMAGES_DIR/lib/configure-chroot.sh" "$root/tmp/configure-chroot.sh"
    step "configure: user, services, machine id" in_chroot "$root" /bin/sh /tmp/configure-chroot.sh
    rm -f "$root/tmp/configure-chroot.sh"

    # The kernel goes in last, so its initrd is built once, with our module list.
    read_package_list "$IMAGES_DIR/initramfs-modules" >> "$root/etc/initramfs-tools/modules"
    step "apt-get install linux-image-cloud-amd64 (builds the initrd)" \
        in_chroot "$root" apt-get -y --no-install-recommends install linux-image-cloud-amd64
    local kver
    kver=$(ls "$root/lib/modules")
    [ "$(printf '%s\n' "$kver" | wc -l)" -eq 1 ] || fail "expected one kernel in the image, found: $kver"
    in_chroot "$root" sh -c 'apt-mark hold linux-image-cloud-amd64 $(dpkg-query -W -f "\${Package}\n" "linux-image-*-cloud-amd64")' >> "$LOG" 2>&1
    STEP_NAME="check the initrd loads the virtio modules"
    info "$STEP_NAME"
    check_initrd "$root" "$kver"
    STEP_NAME=""

    step "clean apt caches, logs and build-only files" clean_tree "$root"
    umount_chroot

    mv "$root/boot/vmlinuz-$kver" "$work/kernel"
    mv "$root/boot/initrd.img-$kver" "$work/initrd"
    rm -f "$root/boot/"*"-$kver" "$root"/vmlinuz* "$root"/initrd.img*
    echo "$kver" > "$work/kernel-version"
    date -u +%Y-%m-%dT%H:%M:%SZ > "$work/done"
    rm_tree "$base"
    mv "$work" "$base"
}

# check_initrd ROOT KVER: every module in images/initramfs-modules is in the initrd or built into the
# kernel, and the initrd knows the root disk. A miss here would otherwise show up as a guest that
# hangs at boot waiting for /dev/vda.
check_initrd() {
    local root=$1 kver=$2 listing module pattern missing=()
    listing=$(in_chroot "$root" lsinitramfs "/boot/initrd.img-$kver") \
        || fail "lsinitramfs could not read /boot/initrd.img-$kver"
    while read -r module; do
        # In module file names '-' and '_' are the same (virtio_rng is virtio-rng.ko).
        pattern="/${module//[-_]/[-_]}\.ko(\.xz|\.zst)?$"
        if printf '%s\n' "$listing" | grep -Eq "$pattern"; then
            continue
        fi
        if grep -Eq "$pattern" "$root/lib/modules/$kver/modules.builtin"; then
            continue
        fi
        missing+=("$module")
    done < <(read_package_list "$IMAGES_DIR/initramfs-modules")
    [ ${#missing[@]} -eq 0 ] || fail "the initrd lacks modules: ${missing[*]} (check images/initramfs-modules and MODULES= in rootfs/etc/initramfs-tools/conf.d/deskd)"
    printf '%s\n' "$listing" | grep -q 'conf/conf.d/deskd$' \
        || fail "the initrd lacks conf/conf.d/deskd (default root /dev/vda)"
}

clean_tree() {
    local root=$1
    in_chroot "$root" apt-get clean
    rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin
    rm -f "$root/usr/sbin/policy-rc.d"
    rm -rf "$root/tmp/"* "$root/var/tmp/"* "$root/root/.cache"
    find "$root/var/log" -type f -delete
    rm -f "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
    # The build host's resolver means nothing inside a computer: every computer's resolver is
    # deskd's, at its gateway (src/network; the address is the same for all of them).
    rm -f "$root/etc/resolv.conf"
    echo "nameserver 172.16.0.1" > "$root/etc/resolv.conf"
    # Host keys or caches that would be shared by every computer made from this image.
    rm -f "$root/var/lib/systemd/random-seed" "$root/etc/ssh/ssh_host_"*
}
