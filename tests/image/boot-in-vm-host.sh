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
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

img=${1:?image dir}
out=${2:?output dir}
shift 2
boot_timeout=${DESKD_BOOT_TIMEOUT:-600}
mem=${DESKD_BOOT_MEM:-2048}
# One vCPU by default: in the rig, two-vCPU desktop guests triple-fault or lock up in about half of
# their boots (tests/rig/README.md, "Faults of the emulator"); one-vCPU guests have not. Two-vCPU
# boots stay covered by tests/vmm/e2e; DESKD_BOOT_VCPUS=2 runs this test with two.
vcpus=${DESKD_BOOT_VCPUS:-1}

[ -c /dev/kvm ] || { echo "no /dev/kvm here: run this inside the rig (tests/image/boot-test does)" >&2; exit 2; }
grep -Eqw 'svm|vmx' /proc/cpuinfo || { echo "this host's /dev/kvm cannot run a stock kernel (no vmx/svm): use the rig" >&2; exit 2; }
[ -c /dev/vhost-vsock ] || modprobe vhost_vsock 2>/dev/null || true
[ -c /dev/vhost-vsock ] || { echo "no /dev/vhost-vsock (module vhost_vsock): cannot reach the agent" >&2; exit 2; }
lib_name=boot-in-vm-host lib_exit=2
# shellcheck source=tests/lib/common.sh
. "$here/../lib/common.sh"
if [ -n "${DESKD_VMM:-}" ]; then
    require_tools python3:python3
else
    require_tools qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils socat:socat
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# http_get CID PATH FILE: one request to the agent (port 1024) over vsock; FILE gets the answer with
# its status line and headers. With deskd's VMM through its hybrid-vsock socket (tests/lib/
# hybrid_vsock.py); with QEMU through the kernel's vsock (socat, HTTP/1.0: no chunking; shut-none:
# socat must not half-close after the request, or the agent may take the client for gone).
http_get() {
    local cid=$1 path=$2 file=$3
    if [ -n "${DESKD_VMM:-}" ]; then
        timeout 180 python3 "$here/../lib/hybrid_vsock.py" --include --output "$file" --timeout 120 \
            "$local_dir/vsock" 1024 GET "$path" 2>"$file.err"
        return
    fi
    printf 'GET %s HTTP/1.0\r\nHost: agent\r\n\r\n' "$path" \
        | timeout 180 socat -t 120 - "VSOCK-CONNECT:$cid:1024,shut-none" > "$file" 2>"$file.err"
}

# guest_reset NAME WHY: a guest that reset itself (the VMM's reboot status; this test asks for no
# reboot) is taken for a fault of the emulated SVM and recorded for tests/rig/retry-on-crash.
guest_reset() {
    echo "[$1] $2"
    [ -z "${RIG_FAULTS:-}" ] || echo "image boot test, case $1: $2" >>"$RIG_FAULTS/guest-reset"
}

# The cases boot one after another. DESKD_BOOT_PARALLEL=1 boots them at the same time, each in a
# subshell of its own (its own vsock CID and local folder), in about the time of one; but two L2
# guests at once make the emulator's faults far likelier (CI lost this test to a guest reset and
# then an L1 crash with two guests booting; tests/rig/README.md), so it is not the default.
parallel=${DESKD_BOOT_PARALLEL:-0}
base_dir=$(mktemp -d /tmp/deskd-boot.XXXXXX)
case_pids=()
trap 'for p in "${case_pids[@]}"; do kill "$p" 2>/dev/null; done; wait; rm -rf "$base_dir"; true' EXIT

rootfs_bytes=$(stat -c %s "$img/rootfs")
index=0 status=0
for case in "$@"; do
    index=$((index + 1))
    cid=$((2 + index))
    local_dir="$base_dir/$index"
    mkdir -p "$local_dir"
    (
    qemu_pid=""
    trap '[ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; exit 1' TERM
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
        rm -f "$local_dir/vmm.exit"
        "$DESKD_VMM" vmm --kernel "$img/kernel" --initrd "$img/initrd" --cmdline "$cmdline" \
            --disk "$disk" --disk "$dir/probe.img" --vcpus "$vcpus" --memory "$mem" \
            --vsock-socket "$local_dir/vsock" --vsock-cid "$cid" --console-log "$dir/console.log" \
            --exit-status-file "$local_dir/vmm.exit" ${DESKD_VMM_ARGS:-} \
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
            vmm_status=0
            wait "$qemu_pid" || vmm_status=$?
            qemu_pid=""
            echo "[$name] the VMM exited early (status $vmm_status): $(tail -3 "$dir/qemu.log")"
            # deskd's VMM: status 3 and "3 reboot" in its exit file is a guest reset.
            if [ -n "${DESKD_VMM:-}" ] && [ "$vmm_status" = 3 ]; then
                guest_reset "$name" "deskd vmm ended with status 3 ('$(cat "$local_dir/vmm.exit" 2>/dev/null)' in its exit file) after $(elapsed "$start") s: the guest reset itself (a triple fault or a reset) though this test asks for no reboot"
            fi
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
    if [ -n "$qemu_pid" ]; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
        qemu_pid=""
    fi
    rm -f "$disk"
    {
        echo "agent_ready_s=${agent_ready}"
        echo "selftest_done_s=${selftest_done}"
        echo "resolution=$res"
        echo "image_bytes=$rootfs_bytes"
    } > "$dir/timings.txt"
    sync
    ) &
    case_pids+=($!)
    if [ "$parallel" = 0 ]; then
        wait "${case_pids[-1]}" || status=1
        case_pids=()
    fi
done
for p in "${case_pids[@]}"; do wait "$p" || status=1; done
case_pids=()
# Non-zero when a case's own script failed (a missing tool, a failed copy); what each guest did is
# judged by check_boot.py from the results.
exit "$status"
