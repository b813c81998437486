# runm: build, demo, test. `make demo` and `make test` are all a fresh machine needs:
# both install their system packages first.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
TRIPLE := x86_64-unknown-linux-gnu
TARGET := $(CURDIR)/target
RUNM := $(TARGET)/release/runm
AGENT := $(TARGET)/$(TRIPLE)/release/runm-agent
TEST_GUEST := $(TARGET)/$(TRIPLE)/release/runm-test-guest
GUEST := $(TARGET)/guest
TESTHOST := $(CURDIR)/tests/testhost/run
# The virtio-fs file server runm starts per sandbox, built from crates.io and kept
# beside the runm binary, where runm looks for it.
VIRTIOFSD_VERSION := 1.14.0
VIRTIOFSD := $(TARGET)/release/virtiofsd
# A Debian tree for the integration tests' full-distribution rootfs.
DEBIAN_ROOTFS := $(TARGET)/debian-rootfs
PREFIX ?= /usr/local
# Guest binaries are static: glibc, and libseccomp (libcontainer's seccomp filters) from
# libseccomp-dev's archive.
STATIC_ENV := LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	RUSTFLAGS="-C target-feature=+crt-static"

# Debian packages: guest kernel build, emulated KVM test host, initramfs packing,
# block rootfs images (e2fsprogs), the benchmarks' peers (runc, crun), the agent's
# static libseccomp (libseccomp-dev), virtiofsd's build (libcap-ng-dev) and a Debian
# rootfs for the tests (debootstrap), the clients the tests drive runm with (podman,
# containerd, Docker), and kill(1) and ip(8), which the tests use (procps, iproute2:
# not essential), the networks the tests give containers (the CNI plugins, iptables for
# dockerd's bridge) and the network benchmark's iperf3.
APT_PACKAGES := linux-source-6.12 bc flex bison libelf-dev libssl-dev xz-utils \
	qemu-system-x86 linux-image-amd64 busybox-static cpio kmod e2fsprogs runc crun \
	libseccomp-dev libcap-ng-dev debootstrap podman containerd docker.io procps iproute2 \
	containernetworking-plugins iptables iperf3

.PHONY: all deps runm virtiofsd agent kernel initramfs guest test-guest demo test \
	unit-test integration-test lint bench install clean testhost-qemu

all: runm guest

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make: installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

runm: virtiofsd
	$(CARGO) build --release -p runm

virtiofsd: deps
	@if ! "$(VIRTIOFSD)" --version 2>/dev/null | grep -q " $(VIRTIOFSD_VERSION)$$"; then \
	  $(CARGO) install --locked --quiet virtiofsd@$(VIRTIOFSD_VERSION) --root $(TARGET)/tools; \
	  mkdir -p $(dir $(VIRTIOFSD)); cp $(TARGET)/tools/bin/virtiofsd $(VIRTIOFSD); \
	fi

# Built once: later runs reuse it (debootstrap needs the network, the test host has none).
# The mirror is the one this machine's APT already uses for bookworm's main component.
$(DEBIAN_ROOTFS)/etc/debian_version: | deps
	rm -rf $(DEBIAN_ROOTFS).tmp
	@mirror() { apt-get indextargets --format '$$(REPO_URI)' 'Identifier: Packages' \
	  'Release: bookworm' 'Component: main' | head -n 1; }; \
	m=$$(mirror); [ -n "$$m" ] || { apt-get update -qq; m=$$(mirror); }; mirror=$$m; \
	if [ -z "$$mirror" ]; then \
	  echo "make: no APT source serves Debian bookworm's main component (see /etc/apt/sources.list.d/); debootstrap needs one" >&2; \
	  exit 1; \
	fi; \
	echo "debootstrap bookworm from $$mirror"; \
	debootstrap --variant=minbase bookworm $(DEBIAN_ROOTFS).tmp "$$mirror" >/dev/null
	rm -rf $(DEBIAN_ROOTFS); mv $(DEBIAN_ROOTFS).tmp $(DEBIAN_ROOTFS)

# The agent is PID 1 of a guest with no libc: link it statically.
agent: deps
	$(STATIC_ENV) $(CARGO) build --release -p runm-agent --target $(TRIPLE)

# The integration tests' guest init, packed the same way as the agent.
test-guest: deps
	$(STATIC_ENV) $(CARGO) build --release -p runm-test-guest --target $(TRIPLE)
	@rootfs/build-initramfs.sh $(TEST_GUEST) $(GUEST)/test-initramfs.cpio >/dev/null

kernel: deps
	@mkdir -p $(GUEST)
	@src=$$(guest-kernel-config/build-kernel.sh | tail -n 1); \
	cmp -s "$$src" $(GUEST)/vmlinux || cp "$$src" $(GUEST)/vmlinux

initramfs: agent deps
	@rootfs/build-initramfs.sh $(AGENT) $(GUEST)/initramfs.cpio >/dev/null

guest: kernel initramfs

# The test host's QEMU: 10.0 from bookworm-backports, unpacked into the cache (Debian 12's
# 7.2 wedges the test host's kernel in long runs). Without it the test host falls back to
# the system's QEMU, with a warning here.
testhost-qemu: deps
	@tests/testhost/fetch-qemu.sh >/dev/null || \
	  echo "make: warning: no QEMU 10.0 for the test host; using the system's (more test host lockups)" >&2

# Runs a busybox container in a microVM with `runm run`, as a runc user would.
demo: all testhost-qemu
	scripts/demo-bundle.sh $(TARGET)/demo-bundle $(RUNM)
	$(TESTHOST) $(RUNM) --root $(TARGET)/demo-state run --bundle $(TARGET)/demo-bundle demo-$$$$

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

unit-test:
	$(CARGO) test --release

# Each integration test binary runs inside the emulated KVM test host where /dev/kvm
# cannot boot Linux (tests/testhost/run decides, and says which).
# A test host silent for 4 minutes has hung (no single test takes a minute): it is
# restarted once and the test binary run again, loudly (see tests/testhost/run).
integration-test: all test-guest testhost-qemu $(DEBIAN_ROOTFS)/etc/debian_version
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(TESTHOST) RUNM_TESTHOST_STALL=240 \
	  $(CARGO) test --release --no-fail-fast -p runm-tests -- --test-threads=1

test: deps lint unit-test integration-test

bench: all test-guest testhost-qemu $(DEBIAN_ROOTFS)/etc/debian_version
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(TESTHOST) \
	  $(CARGO) bench -p runm-tests

install: all
	install -D -m 0755 $(RUNM) $(DESTDIR)$(PREFIX)/bin/runm
	install -D -m 0755 $(VIRTIOFSD) $(DESTDIR)$(PREFIX)/lib/runm/virtiofsd
	install -D -m 0644 $(GUEST)/vmlinux $(DESTDIR)$(PREFIX)/lib/runm/vmlinux
	install -D -m 0644 $(GUEST)/initramfs.cpio $(DESTDIR)$(PREFIX)/lib/runm/initramfs.cpio

clean:
	$(CARGO) clean
