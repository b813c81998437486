#!/usr/bin/env bash
# Build the runm guest kernel: an uncompressed ELF vmlinux (booted through
# the PVH entry point) from Debian's linux-source-6.12 tarball, configured as
# `make tinyconfig` + the fragments in fragments/*.conf.
#
# The result is cached outside the checkout, keyed by the source version and
# a hash of the fragments and of this script:
#   ${RUNM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/runm}/kernel/<version>-<hash>/{vmlinux,config}
# A run whose inputs are unchanged only prints the cached path.
#
# Logs go to stderr; the last line on stdout is the absolute path of vmlinux.
set -euo pipefail
export LC_ALL=C # stable glob order (merge order and cache hash)

readonly KERNEL_PKG=linux-source-6.12
readonly KERNEL_TARBALL=/usr/src/${KERNEL_PKG}.tar.xz
readonly BUILD_DEPS="${KERNEL_PKG} bc flex bison libelf-dev libssl-dev"
readonly KARCH=x86_64

SCRIPT_PATH=$(readlink -f -- "${BASH_SOURCE[0]}")
SCRIPT_DIR=$(dirname -- "$SCRIPT_PATH")
readonly SCRIPT_PATH SCRIPT_DIR
readonly FRAGMENT_DIR=$SCRIPT_DIR/fragments

log() { printf 'build-kernel: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

usage() {
	cat <<EOF
Usage: ${0##*/} [--print-path] [--force]

Builds the runm guest kernel (ELF vmlinux) from ${KERNEL_TARBALL}
with tinyconfig + ${FRAGMENT_DIR}/*.conf, and prints its path.

  --print-path  print the path the kernel is (or would be) cached at; build nothing
  --force       rebuild even if a cached kernel exists
  -h, --help    show this help

Environment: RUNM_CACHE_DIR (default \${XDG_CACHE_HOME:-\$HOME/.cache}/runm).
EOF
}

print_path=false
force=false
while (($#)); do
	case $1 in
	--print-path) print_path=true ;;
	--force) force=true ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		die "unknown argument: $1"
		;;
	esac
	shift
done

[[ -f $KERNEL_TARBALL ]] ||
	die "${KERNEL_TARBALL} not found; install the kernel source and build tools with: apt-get install ${BUILD_DEPS}"

shopt -s nullglob
fragments=("$FRAGMENT_DIR"/*.conf)
shopt -u nullglob
((${#fragments[@]})) || die "no fragments in ${FRAGMENT_DIR}"

# Version of the kernel source: the Debian package version when the tarball
# belongs to an installed package (cheap), else the version in its Makefile.
source_version() {
	local pkg version
	if pkg=$(dpkg-query -S "$KERNEL_TARBALL" 2>/dev/null) &&
		version=$(dpkg-query -W -f='${Version}' "${pkg%%:*}" 2>/dev/null) &&
		[[ -n $version ]]; then
		# A Debian version may contain ':' and '~'; keep the path plain.
		printf '%s\n' "${version//[^A-Za-z0-9.+_-]/_}"
		return
	fi
	log "${KERNEL_TARBALL} is not from a Debian package; reading its Makefile"
	tar -xJOf "$KERNEL_TARBALL" --wildcards --no-wildcards-match-slash --occurrence=1 '*/Makefile' 2>/dev/null |
		awk -F' *= *' '$1 == "VERSION" {v = $2} $1 == "PATCHLEVEL" {p = $2}
			$1 == "SUBLEVEL" {s = $2} END {if (v == "") exit 1; print v "." p "." s}' ||
		die "cannot read the kernel version from ${KERNEL_TARBALL}"
}

# Hash of everything that decides the configuration: fragment names and
# contents (in merge order) and this script.
inputs_hash() {
	local f
	{
		for f in "${fragments[@]}"; do
			printf '== %s\n' "${f##*/}"
			cat -- "$f"
		done
		printf '== build-kernel.sh\n'
		cat -- "$SCRIPT_PATH"
	} | sha256sum | cut -c1-16
}

cache_root=${RUNM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/runm}
[[ $cache_root == /* ]] || cache_root=$PWD/$cache_root
kernel_cache=$cache_root/kernel
key_dir=$kernel_cache/$(source_version)-$(inputs_hash)
vmlinux=$key_dir/vmlinux

if $print_path; then
	printf '%s\n' "$vmlinux"
	exit 0
fi

if ! $force && [[ -f $vmlinux ]]; then
	log "cached: ${vmlinux}"
	printf '%s\n' "$vmlinux"
	exit 0
fi

missing=()
for tool in make gcc ld flex bison bc perl tar xz sha256sum; do
	command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -e /usr/include/gelf.h ]] || missing+=("libelf headers")
((${#missing[@]} == 0)) ||
	die "missing build tools (${missing[*]}); install them with: apt-get install build-essential ${BUILD_DEPS}"

# Every CONFIG_ option set in the fragments, as "NAME=value" lines ("n" for
# "# CONFIG_X is not set"); fails if two fragments disagree.
requested_options() {
	awk '
		/^CONFIG_[A-Za-z0-9_]+=/ {
			i = index($0, "="); name = substr($0, 1, i - 1); value = substr($0, i + 1)
		}
		/^# CONFIG_[A-Za-z0-9_]+ is not set$/ { name = $2; value = "n" }
		name != "" {
			if (name in seen && seen[name] != value) {
				printf "%s: %s=%s conflicts with %s\n", FILENAME, name, value, where[name] > "/dev/stderr"
				bad = 1
			}
			seen[name] = value; where[name] = FILENAME ": " name "=" value
			print name "=" value
			name = ""
		}
		END { exit bad }
	' "${fragments[@]}"
}

# Check that every option requested by the fragments made it into the final
# .config: merge_config.sh and olddefconfig silently drop options whose
# dependencies are not met.
verify_config() {
	local config=$1 req name want got dropped=()
	local -A final=()
	while IFS= read -r req; do
		case $req in
		CONFIG_*=*) final[${req%%=*}]=${req#*=} ;;
		"# CONFIG_"*" is not set") name=${req#\# }; final[${name%% *}]=n ;;
		esac
	done <"$config"
	while IFS= read -r req; do
		name=${req%%=*} want=${req#*=}
		got=${final[$name]:-n}
		if [[ $want == n ]]; then
			[[ $got == n ]] || dropped+=("${name}: requested n, got ${got}")
		elif [[ $got != "$want" ]]; then
			[[ $got == n ]] && got="not set"
			dropped+=("${name}: requested ${want}, got ${got}")
		fi
	done < <(requested_options | sort -u)
	if ((${#dropped[@]})); then
		log "the final .config does not honour these fragment options (unmet dependencies or typos):"
		printf '  %s\n' "${dropped[@]}" >&2
		die "fix the fragments in ${FRAGMENT_DIR}"
	fi
}

requested_options >/dev/null || die "fragments set the same option to different values"

mkdir -p -- "$kernel_cache"
work=$(mktemp -d -- "$kernel_cache/.build.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
src=$work/src
mkdir -- "$src"
start=$SECONDS

log "unpacking ${KERNEL_TARBALL} into ${work}"
tar -xJf "$KERNEL_TARBALL" -C "$src" --strip-components=1

kmake() {
	make -C "$src" ARCH="$KARCH" KBUILD_BUILD_USER=runm KBUILD_BUILD_HOST=runm "$@" >&2
}

log "configuring: tinyconfig + ${fragments[*]##*/}"
kmake -s tinyconfig
(cd -- "$src" && ./scripts/kconfig/merge_config.sh -m .config "${fragments[@]}") >&2
kmake -s olddefconfig
verify_config "$src/.config"

log "building vmlinux with $(nproc) jobs"
kmake -j"$(nproc)" vmlinux

out=$work/out
mkdir -- "$out"
cp -- "$src/vmlinux" "$out/vmlinux"
cp -- "$src/.config" "$out/config"
# Publish atomically: the keyed folder appears complete or not at all.
if [[ -e $key_dir ]]; then
	mv -T -- "$key_dir" "$work/old"
fi
if ! mv -T -- "$out" "$key_dir" 2>/dev/null; then
	# Another build of the same inputs published first; its result is equivalent.
	[[ -f $vmlinux ]] || die "cannot move the build into ${key_dir}"
	log "${key_dir} was published by a concurrent build; keeping it"
fi

log "built in $((SECONDS - start)) s: ${vmlinux} ($(du -h -- "$vmlinux" | cut -f1))"
printf '%s\n' "$vmlinux"
