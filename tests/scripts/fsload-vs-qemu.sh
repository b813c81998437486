#!/bin/bash
# The same virtio-fs load (the test guest's `fsload` scenario: 10,000 creates, stats and
# deletes through virtiofsd) under runm's VMM and under QEMU's vhost-user-fs-device, in one
# environment, to tell a fault of runm's vhost-user frontend from one of the host.
# Run inside the test host after `make runm test-guest` (FSLOAD_BIG=1 writes and reads
# 256 MiB first):
#   tests/testhost/run tests/scripts/fsload-vs-qemu.sh [runm] [qemu]
set -u
repo=$(cd "$(dirname "$0")/../.." && pwd)
t=$(mktemp -d /tmp/fsload.XXXXXX)
kernel=$repo/target/guest/vmlinux
initrd=$repo/target/guest/test-initramfs.cpio
vfsd=$repo/target/release/virtiofsd
base="console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule quiet"
scenario="runm.test=fsload:load${FSLOAD_BIG:+:big}"

for vmm in "${@:-runm}"; do
    mkdir -p "$t/share-$vmm"
    "$vfsd" --shared-dir "$t/share-$vmm" --socket-path "$t/$vmm.sock" --sandbox none \
        --cache auto --log-level warn &
    vpid=$!
    for _ in $(seq 100); do [ -S "$t/$vmm.sock" ] && break; sleep 0.1; done
    start=$(date +%s)
    case $vmm in
    runm)
        "$repo/target/release/runm" --debug boot --no-agent --kernel "$kernel" --initrd "$initrd" \
            --memory 512 --timeout 900 --cmdline "$scenario" --fs "load=$t/runm.sock" 2>&1 |
            grep -v "vsock\|phase" | grep -E "result|fsload|stopped|error|panic|test-guest" ;;
    qemu)
        qemu-system-x86_64 \
            -M microvm,x-option-roms=off,rtc=off,isa-serial=on,ioapic2=off,acpi=off,memory-backend=mem \
            -object memory-backend-memfd,id=mem,size=512M,share=on \
            -accel kvm -cpu host -smp 1 -m 512M -nodefaults -no-user-config -display none \
            -serial stdio -no-reboot -device i8042 \
            -chardev "socket,id=vfs,path=$t/qemu.sock" -device vhost-user-fs-device,chardev=vfs,tag=load \
            -kernel "$kernel" -initrd "$initrd" -append "$base $scenario" 2>&1 |
            grep -E "result|fsload|error|panic|test-guest" ;;
    esac
    echo "$vmm: ended after $(( $(date +%s) - start )) s"
    kill "$vpid" 2> /dev/null
    wait "$vpid" 2> /dev/null
done
rm -rf "$t"
