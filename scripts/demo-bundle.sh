#!/usr/bin/env bash
# scripts/demo-bundle.sh DIR RUNM: makes an OCI bundle in DIR (a busybox rootfs and a
# config from `runm spec`) whose container says hello from inside its microVM.
set -euo pipefail
dir=$1 runm=$2
busybox=/bin/busybox
rm -rf "$dir"
mkdir -p "$dir/rootfs/bin" "$dir/rootfs/proc" "$dir/rootfs/sys" "$dir/rootfs/dev" "$dir/rootfs/tmp"
cp "$busybox" "$dir/rootfs/bin/busybox"
# Debian's busybox lists itself among its applets: linking that name would turn the
# copied binary into a link to itself.
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$applet"
done
"$runm" spec --bundle "$dir"
python3 - "$dir/config.json" <<'PY'
import json, sys
path = sys.argv[1]
c = json.load(open(path))
c["process"]["terminal"] = False
c["process"]["args"] = ["sh", "-c",
    'echo "hello from container $(hostname), kernel $(uname -r), $(nproc) vCPU(s)"; '
    'echo "its processes:"; ps']
c["hostname"] = "runm-demo"
json.dump(c, open(path, "w"), indent=2)
PY
