#!/usr/bin/env bash
# agent/tests/smoke.sh: runs a busybox container through runm-agent in a real microVM,
# speaking the agent's protocol directly (agent/tests/smoke_client.py); no runm CLI.
#
#   make runm agent initramfs && agent/tests/smoke.sh
#
# Needs busybox-static, e2fsprogs (mkfs.ext4 -d) and runc (for `runc spec`); boots the VM
# through tests/testhost/run. Work files go to target/agent-smoke/.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=$root/target/agent-smoke
runm=$root/target/release/runm
initrd=$root/target/guest/initramfs.cpio
for f in "$runm" "$initrd"; do
    [ -f "$f" ] || { echo "smoke: $f missing: make runm agent initramfs" >&2; exit 2; }
done
for cmd in busybox mkfs.ext4 runc python3; do
    command -v "$cmd" >/dev/null || { echo "smoke: $cmd not found" >&2; exit 2; }
done

rm -rf "$dir"
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" \
    "$dir/rootfs/tmp" "$dir/rootfs/etc" "$dir/spec"
cp "$(command -v busybox)" "$dir/rootfs/bin/busybox"
for applet in sh echo cat sleep id ls ps tty stty hostname; do
    ln -s busybox "$dir/rootfs/bin/$applet"
done
mkfs.ext4 -q -d "$dir/rootfs" "$dir/rootfs.img" 64M
(cd "$dir/spec" && runc spec)

exec "$root/tests/testhost/run" python3 "$root/agent/tests/smoke_client.py" \
    --runm "$runm" --initrd "$initrd" --disk "$dir/rootfs.img" \
    --config "$dir/spec/config.json" --dir "$dir"
