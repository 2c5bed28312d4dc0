#!/usr/bin/env bash
# Boot a deskd image under QEMU/KVM once per case and collect what the guest and its agent show.
# Runs where /dev/kvm is real KVM: inside the rig (tests/rig/run), or on a host with VMX/SVM.
# By default QEMU is the VMM here (microvm with ACPI, virtio-mmio disks, vhost-vsock), a probe
# standing in for deskd's own VMM; DESKD_VMM=/path/to/deskd boots with `deskd vmm` instead (raw disk
# copy, hybrid vsock socket).
#
#   boot-in-vm-host.sh IMAGE_DIR OUT_DIR CASE...     CASE = NAME:RESOLUTION (RESOLUTION "default": omit
#                                                     deskd.resolution, the image's default applies)
# For each case OUT_DIR/NAME/ gets console.log, probe.img (the guest self-test's tar), health.txt,
# screenshot.http and timings.txt. Judging is left to check_boot.py (run it on the host: it is slow
# under emulation).
set -euo pipefail

img=${1:?image dir}
out=${2:?output dir}
shift 2
boot_timeout=${DESKD_BOOT_TIMEOUT:-1500}
mem=${DESKD_BOOT_MEM:-2048}
# One vCPU by default: in the rig, two-vCPU desktop guests triple-fault or lock up in about half of
# their boots (tests/rig/README.md, "Faults of the emulator"); one-vCPU guests have not. Two-vCPU
# boots stay covered by tests/vmm/e2e; DESKD_BOOT_VCPUS=2 runs this test with two.
vcpus=${DESKD_BOOT_VCPUS:-1}

[ -c /dev/kvm ] || { echo "no /dev/kvm here: run this inside the rig (tests/image/boot-test does)" >&2; exit 2; }
grep -Eqw 'svm|vmx' /proc/cpuinfo || { echo "this host's /dev/kvm cannot run a stock kernel (no vmx/svm): use the rig" >&2; exit 2; }
[ -c /dev/vhost-vsock ] || modprobe vhost_vsock 2>/dev/null || true
[ -c /dev/vhost-vsock ] || { echo "no /dev/vhost-vsock (module vhost_vsock): cannot reach the agent" >&2; exit 2; }
for tool in qemu-system-x86_64 qemu-img socat; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install qemu-system-x86 qemu-utils socat)" >&2; exit 2; }
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# http_get CID PATH FILE: one HTTP/1.0 request to the agent over vsock (1.0: no chunking). shut-none:
# socat must not half-close the connection after sending the request, or the server may take the
# client for gone and drop a slow answer.
http_get() {
    local cid=$1 path=$2 file=$3
    if [ -n "${DESKD_VMM:-}" ]; then
        # deskd's vsock device: connect to its Unix socket, say "CONNECT 1024", read "OK ...".
        timeout 180 python3 - "$local_dir/vsock" "$path" > "$file" 2>"$file.err" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(120)
s.connect(sys.argv[1])
s.sendall(b"CONNECT 1024\n")
line = b""
while not line.endswith(b"\n"):
    c = s.recv(1)
    if not c:
        sys.exit("vsock socket closed during CONNECT")
    line += c
if not line.startswith(b"OK"):
    sys.exit(f"CONNECT refused: {line!r}")
s.sendall(f"GET {sys.argv[2]} HTTP/1.0\r\nHost: agent\r\n\r\n".encode())
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    sys.stdout.buffer.write(chunk)
PY
        return
    fi
    printf 'GET %s HTTP/1.0\r\nHost: agent\r\n\r\n' "$path" \
        | timeout 180 socat -t 120 - "VSOCK-CONNECT:$cid:1024,shut-none" > "$file" 2>"$file.err"
}

qemu_pid=""
local_dir=$(mktemp -d /tmp/deskd-boot.XXXXXX)
trap '[ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; rm -rf "$local_dir"; true' EXIT

cid=3
rootfs_bytes=$(stat -c %s "$img/rootfs")
for case in "$@"; do
    name=${case%%:*}
    res=${case#*:}
    dir="$out/$name"
    rm -rf "$dir"
    mkdir -p "$dir"
    # The guest writes to a copy-on-write overlay one GiB larger than the image (its root fs must grow).
    # It lives in local memory (/tmp is a tmpfs in the rig): the shared output folder is 9p without
    # caching, far too slow for a disk.
    if [ -n "${DESKD_VMM:-}" ]; then
        disk="$local_dir/$name.raw"
        cp --sparse=always "$img/rootfs" "$disk"
        truncate -s "$((rootfs_bytes + (1 << 30)))" "$disk"
    else
        disk="$local_dir/$name.qcow2"
        qemu-img create -q -f qcow2 -F raw -b "$img/rootfs" "$disk" "$((rootfs_bytes + (1 << 30)))"
    fi
    truncate -s 64M "$dir/probe.img"
    cmdline="console=ttyS0 root=/dev/vda rw quiet deskd.selftest=1 deskd.hostname=imgtest-$name"
    [ "$res" = default ] || cmdline="$cmdline deskd.resolution=$res"
    echo "[$name] booting $(basename "$img") with: $cmdline"
    start=$(now)
    if [ -n "${DESKD_VMM:-}" ]; then
        rm -f "$local_dir/vsock"
        "$DESKD_VMM" vmm --kernel "$img/kernel" --initrd "$img/initrd" --cmdline "$cmdline" \
            --disk "$disk" --disk "$dir/probe.img" --vcpus "$vcpus" --memory "$mem" \
            --vsock-socket "$local_dir/vsock" --vsock-cid "$cid" --console-log "$dir/console.log" ${DESKD_VMM_ARGS:-} \
            > "$dir/qemu.log" 2>&1 &
    else
    qemu-system-x86_64 -M microvm,acpi=on -enable-kvm -cpu host -m "$mem" -smp "$vcpus" \
        -nodefaults -no-user-config -display none -serial "file:$dir/console.log" \
        -kernel "$img/kernel" -initrd "$img/initrd" -append "$cmdline" \
        -drive "id=root,file=$disk,format=qcow2,if=none" -device virtio-blk-device,drive=root \
        -drive "id=probe,file=$dir/probe.img,format=raw,if=none" -device virtio-blk-device,drive=probe \
        -device virtio-rng-device \
        -device "vhost-vsock-device,guest-cid=$cid" \
        > "$dir/qemu.log" 2>&1 &
    fi
    qemu_pid=$!

    agent_ready="" selftest_done=""
    while :; do
        if ! kill -0 "$qemu_pid" 2>/dev/null; then
            echo "[$name] the VMM exited early: $(tail -3 "$dir/qemu.log")"
            break
        fi
        # Ready is the agent's own verdict (`"ready":true`: X, the window manager, the panel drawn,
        # the desktop mapped; deskd calls the computer `running` then). The screenshot is taken at
        # that moment, as a client acting on `running` would, and must show the desktop.
        if [ -z "$agent_ready" ] && http_get "$cid" /health "$dir/health.txt" &&
            grep -Eq '^HTTP/1\.[01] 200' "$dir/health.txt" && grep -q '"ready":true' "$dir/health.txt"; then
            agent_ready=$(elapsed "$start")
            echo "[$name] agent reports the desktop ready after ${agent_ready}s"
            shot_start=$(now)
            http_get "$cid" /screenshot "$dir/screenshot.http" || echo "[$name] GET /screenshot failed"
            echo "[$name] agent /screenshot took $(elapsed "$shot_start")s, $(stat -c %s "$dir/screenshot.http") bytes"
        fi
        if [ -z "$selftest_done" ] && grep -q DESKD-SELFTEST-DONE "$dir/console.log" 2>/dev/null; then
            selftest_done=$(elapsed "$start")
            echo "[$name] guest self-test done after ${selftest_done}s"
        fi
        [ -n "$agent_ready" ] && [ -n "$selftest_done" ] && break
        if [ "$(elapsed "$start" | cut -d. -f1)" -ge "$boot_timeout" ]; then
            echo "[$name] gave up after ${boot_timeout}s (agent ready: ${agent_ready:-no}, self-test done: ${selftest_done:-no}; last /health: $(tail -c 300 "$dir/health.txt" 2>/dev/null))"
            break
        fi
        sleep 3
    done
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
    rm -f "$disk"
    {
        echo "agent_ready_s=${agent_ready}"
        echo "selftest_done_s=${selftest_done}"
        echo "resolution=$res"
        echo "image_bytes=$rootfs_bytes"
    } > "$dir/timings.txt"
    sync
done
