//! The first microVM: `runm boot` boots the real guest kernel and initramfs with our VMM,
//! and bad input is refused with an error naming the file or value.

use std::time::{Duration, Instant};

use runm_tests::*;

/// Generous: under the emulated test host a boot takes seconds, not milliseconds.
const DEADLINE: Duration = Duration::from_secs(600);

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn boots_the_guest_and_the_agent_reports_ready() {
    require_kvm();
    let _vm = vm_lock();
    let out = run_runm(&["boot"], DEADLINE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    let banner = stdout
        .lines()
        .find(|l| l.starts_with(BANNER_PREFIX))
        .unwrap_or_else(|| panic!("no agent banner\n{}", describe(&out)));
    // The release comes from uname(2) in the guest: our 6.12 build, not the host's kernel.
    assert!(
        banner.starts_with("runm-agent ready (kernel 6.12."),
        "{banner}"
    );
    assert!(banner.ends_with(')'), "{banner}");
    assert_no_runm_left();
}

#[test]
fn a_hung_guest_is_killed_at_the_timeout() {
    require_kvm();
    let _vm = vm_lock();
    // No init: the kernel panics, and panic=0 makes it hang instead of rebooting, so the
    // agent never answers. (The VMM's own timeout is tested in lifecycle.rs.)
    let started = Instant::now();
    let out = run_runm(
        &[
            "boot",
            "--timeout",
            "20",
            "--cmdline",
            "rdinit=/no-such-init panic=0",
        ],
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("cannot reach the guest agent: the agent did not answer within 20s"),
        "{}",
        describe(&out)
    );
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_no_runm_left();
}

#[test]
fn a_guest_that_dies_while_booting_ends_the_wait_at_once() {
    // No init: the kernel panics and (panic=-1) resets the VM through the i8042 long
    // before the timeout.
    boot_without_init("", "the guest reset itself");
}

#[test]
fn a_guest_that_triple_faults_is_reported_as_a_crash() {
    // The same panic, but the kernel resets by triple-faulting: runm names the crash
    // rather than calling it a reset.
    boot_without_init(" reboot=t", "the guest triple-faulted (it crashed)");
}

/// Boots a guest whose kernel finds no init, and checks that runm stops waiting for the
/// agent with `how` the guest stopped.
fn boot_without_init(cmdline: &str, how: &str) {
    require_kvm();
    let _vm = vm_lock();
    let cmdline = format!("rdinit=/no-such-init{cmdline}");
    let out = run_runm(
        &["boot", "--timeout", "300", "--cmdline", &cmdline],
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let want = format!(
        "cannot reach the guest agent: the guest stopped before its agent answered ({how})"
    );
    assert!(stderr(&out).contains(&want), "{}", describe(&out));
    assert_no_runm_left();
}

#[test]
fn missing_kernel_is_named() {
    let _vm = vm_lock();
    let out = run_runm(&["boot", "--kernel", "/nonexistent/vmlinux"], DEADLINE);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("guest kernel /nonexistent/vmlinux: no such file"),
        "{}",
        describe(&out)
    );
    assert_no_runm_left();
}

#[test]
fn corrupt_kernel_is_named() {
    require_kvm();
    let _vm = vm_lock();
    let path = std::env::temp_dir().join(format!("runm-corrupt-vmlinux-{}", std::process::id()));
    std::fs::write(&path, vec![0x5a; 1 << 16]).unwrap();
    let out = run_runm(&["boot", "--kernel", path.to_str().unwrap()], DEADLINE);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "kernel image {}: not a loadable ELF vmlinux",
            path.display()
        )),
        "{}",
        describe(&out)
    );
    assert_no_runm_left();
}

#[test]
fn missing_initramfs_is_named() {
    let _vm = vm_lock();
    let out = run_runm(
        &["boot", "--initrd", "/nonexistent/initramfs.cpio"],
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("guest initramfs /nonexistent/initramfs.cpio: no such file"),
        "{}",
        describe(&out)
    );
    assert_no_runm_left();
}

#[test]
fn zero_memory_is_refused() {
    let _vm = vm_lock();
    let out = run_runm(&["boot", "--memory", "0"], DEADLINE);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("memory size 0 MiB is out of range"),
        "{}",
        describe(&out)
    );
    assert_no_runm_left();
}
