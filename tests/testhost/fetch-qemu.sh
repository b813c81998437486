#!/usr/bin/env bash
# Fetches QEMU 10.0 from Debian's bookworm-backports into runm's cache, for the emulated
# KVM test host, and prints the path of its qemu-system-x86_64.
#
# Why: Debian 12's QEMU 7.2 emulates nested SVM badly enough that the test host's kernel
# soft-locks or wedges in most long test runs (the malformed-bundle corpus failed three runs
# of three); QEMU 10.0 ran the same test clean and twice as fast. Its package unpacks and
# runs with Debian 12's libraries, so it is unpacked into the cache, never installed over
# the system's QEMU. The mirror is the one this machine's APT already uses for bookworm.
#
# Usage: fetch-qemu.sh   (idempotent: a fetched QEMU that runs is kept)
# Environment: RUNM_CACHE_DIR (default $XDG_CACHE_HOME/runm or ~/.cache/runm).
set -euo pipefail

say() { printf 'fetch-qemu: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

cache=${RUNM_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/runm}/testhost-qemu
bin=$cache/root/usr/bin/qemu-system-x86_64
if [ -x "$bin" ] && "$bin" --version > /dev/null 2>&1; then
    printf '%s\n' "$bin"
    exit 0
fi

mirror() {
    apt-get indextargets --format '$(REPO_URI)' 'Identifier: Packages' \
        'Release: bookworm' 'Component: main' | head -n 1
}
uri=$(mirror)
[ -n "$uri" ] || die "no APT source serves Debian bookworm's main component (see /etc/apt/sources.list.d/)"

# A private APT state: the machine's own sources and lists are left as they are.
apt=$cache/apt
rm -rf "$apt" "$cache/root.tmp"
mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" \
    "$cache/root.tmp"
cat > "$apt/sources/backports.sources" << EOF
Types: deb
URIs: ${uri%/}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt/sources"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
    -o APT::Sandbox::User=root -qq)
say "fetching qemu-system-x86 from bookworm-backports at $uri"
timeout 300 apt-get "${opts[@]}" update > /dev/null || die "apt-get update of bookworm-backports failed"
(cd "$apt/debs" && timeout 600 apt-get "${opts[@]}" download \
    qemu-system-x86/bookworm-backports qemu-system-data/bookworm-backports > /dev/null) ||
    die "cannot download qemu-system-x86 and qemu-system-data from bookworm-backports"
for deb in "$apt/debs"/*.deb; do
    dpkg-deb -x "$deb" "$cache/root.tmp"
done
"$cache/root.tmp/usr/bin/qemu-system-x86_64" --version > /dev/null ||
    die "the fetched QEMU does not run here"
rm -rf "$cache/root" "$apt"
mv "$cache/root.tmp" "$cache/root"
say "$("$bin" --version | head -n 1)"
printf '%s\n' "$bin"
