#!/usr/bin/env bash
# Packs the guest agent as /init into an uncompressed newc cpio archive.
#
#   rootfs/build-initramfs.sh AGENT_BINARY OUTPUT
#
# The archive is cached under ${RUNM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/runm}/initramfs/,
# keyed by the agent's and this script's content, and copied to OUTPUT.
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: $0 AGENT_BINARY OUTPUT"
agent=$1 out=$2
[ -f "$agent" ] || die "agent binary $agent: no such file (build it with \`make agent\`)"
command -v cpio >/dev/null || die "cpio not found: apt-get install cpio"
# A dynamically linked /init cannot run: the initramfs has no libc.
if file "$agent" 2>/dev/null | grep -q 'dynamically linked'; then
  die "agent binary $agent is dynamically linked; build it with -C target-feature=+crt-static"
fi

cache=${RUNM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/runm}/initramfs
key=$(cat "$agent" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)
cached=$cache/$key.cpio

if [ ! -f "$cached" ]; then
  mkdir -p "$cache"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{proc,sys,dev,tmp,run}
  install -m 0755 "$agent" "$stage/init"
  # Fixed owner and mtimes make the archive depend only on its content.
  find "$stage" -exec touch -h -d @0 {} +
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) > "$cached.tmp"
  mv "$cached.tmp" "$cached"
  echo "build-initramfs: built $cached" >&2
fi
mkdir -p "$(dirname "$out")"
cp "$cached" "$out.tmp" && mv "$out.tmp" "$out"
echo "$out"
