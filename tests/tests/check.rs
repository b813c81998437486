//! `runm check`: one line per check, `ok` or `FAIL` with a hint below each failure, and
//! exit status 0 exactly when nothing failed. Only the first test needs KVM (every check
//! passing); the others hold wherever the report can be made, and break one thing on
//! purpose to see what the report says about it.

use std::ffi::OsStr;
use std::process::Output;
use std::time::Duration;

use runm_tests::*;

/// `runm check` boots nothing, but creates a VM: generous for the emulated test host.
const DEADLINE: Duration = Duration::from_secs(120);

/// What `runm check` checks, in the order it reports them.
const SUBJECTS: [&str; 7] = [
    "/dev/kvm",
    "config",
    "guest kernel",
    "guest initramfs",
    "virtiofsd",
    "privileges",
    "state root",
];

/// One check's line of the report.
#[derive(Debug)]
struct Line {
    ok: bool,
    subject: String,
    detail: String,
    /// The `-> ...` line below a failure.
    hint: Option<String>,
}

/// The report's lines, asserting its shape: each line a check (`ok    S: ...` or
/// `FAIL  S: ...`), each failure followed by exactly one hint line (`      -> ...`).
fn report(out: &Output) -> Vec<Line> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<Line> = Vec::new();
    for text in stdout.lines() {
        if let Some(hint) = text.strip_prefix("      -> ") {
            let last = lines.last_mut();
            assert!(
                last.as_ref().is_some_and(|l| !l.ok && l.hint.is_none()),
                "a hint line must follow a FAIL line: {text:?}\n{}",
                describe(out)
            );
            last.unwrap().hint = Some(hint.to_string());
            continue;
        }
        let (ok, rest) = if let Some(rest) = text.strip_prefix("ok    ") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("FAIL  ") {
            (false, rest)
        } else {
            panic!("not a report line: {text:?}\n{}", describe(out));
        };
        let (subject, detail) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("no `subject: detail` in {text:?}"));
        lines.push(Line {
            ok,
            subject: subject.to_string(),
            detail: detail.to_string(),
            hint: None,
        });
    }
    let subjects: Vec<&str> = lines.iter().map(|l| l.subject.as_str()).collect();
    assert_eq!(subjects, SUBJECTS, "{}", describe(out));
    for line in &lines {
        assert_eq!(line.ok, line.hint.is_none(), "{line:?}\n{}", describe(out));
    }
    lines
}

/// The report's line about `subject`.
fn line<'a>(lines: &'a [Line], subject: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.subject == subject)
        .unwrap_or_else(|| panic!("no {subject} line in {lines:?}"))
}

fn check_with(args: &[&str], env: &[(&str, &OsStr)]) -> (Output, Vec<Line>) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out = run_runm_env(&all, env, DEADLINE);
    let lines = report(&out);
    (out, lines)
}

/// The report's line about `subject`, which must be a failure, in a report that exited 1.
fn failed<'a>(out: &Output, lines: &'a [Line], subject: &str) -> &'a Line {
    assert_eq!(out.status.code(), Some(1), "{}", describe(out));
    let line = line(lines, subject);
    assert!(!line.ok, "{}", describe(out));
    line
}

#[test]
fn on_a_host_that_can_run_runm_every_check_passes() {
    require_kvm();
    let _vm = vm_lock();
    let (out, lines) = check_with(&[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(lines.iter().all(|l| l.ok), "{}", describe(&out));
    let kvm = line(&lines, "/dev/kvm");
    assert!(
        kvm.detail.starts_with("KVM API 12, can create a VM"),
        "{kvm:?}"
    );
    assert!(
        line(&lines, "guest kernel").detail.ends_with(" (ELF)"),
        "{}",
        describe(&out)
    );
    assert_no_runm_left();
}

#[test]
fn one_line_per_check_and_the_status_is_0_exactly_when_none_failed() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-shape");
    let missing = tmp.join("no-such-vmlinux");
    // As this host is, and with one check sure to fail.
    for env in [vec![], vec![("RUNM_KERNEL", missing.as_os_str())]] {
        let (out, lines) = check_with(&[], &env);
        let failed = lines.iter().any(|l| !l.ok);
        let expected = if failed { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(expected), "{}", describe(&out));
        assert!(out.stderr.is_empty(), "{}", describe(&out));
    }
}

#[test]
fn a_missing_kernel_from_runm_kernel_is_named_with_the_variable() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-missing-kernel");
    let missing = tmp.join("no-such-vmlinux");
    let (out, lines) = check_with(&[], &[("RUNM_KERNEL", missing.as_os_str())]);
    let kernel = failed(&out, &lines, "guest kernel");
    assert_eq!(
        kernel.detail,
        format!("{}: no such file (from RUNM_KERNEL)", missing.display())
    );
    assert_eq!(
        kernel.hint.as_deref(),
        Some("set RUNM_KERNEL to the path of a guest kernel (vmlinux), or unset it")
    );
}

#[test]
fn a_kernel_that_is_not_elf_is_named() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-not-elf");
    let script = tmp.join("vmlinux");
    std::fs::write(&script, "#!/bin/sh\necho not a kernel\n").unwrap();
    let (out, lines) = check_with(&[], &[("RUNM_KERNEL", script.as_os_str())]);
    let kernel = failed(&out, &lines, "guest kernel");
    assert!(
        kernel
            .detail
            .starts_with(&format!("{} is not an ELF file", script.display())),
        "{}",
        describe(&out)
    );
    assert_eq!(
        kernel.hint.as_deref(),
        Some("set RUNM_KERNEL to the path of a guest kernel (vmlinux), or unset it")
    );
}

#[test]
fn a_config_file_naming_a_missing_initramfs_is_named_with_its_key() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-config-initrd");
    let config = tmp.join("config.toml");
    let missing = tmp.join("no-such.cpio");
    std::fs::write(&config, format!("initrd = \"{}\"\n", missing.display())).unwrap();
    let (out, lines) = check_with(&[], &[("RUNM_CONFIG", config.as_os_str())]);
    let initramfs = failed(&out, &lines, "guest initramfs");
    assert_eq!(
        initramfs.detail,
        format!(
            "{}: no such file (from `initrd` in {})",
            missing.display(),
            config.display()
        )
    );
    let config_line = line(&lines, "config");
    assert!(config_line.ok, "{}", describe(&out));
    assert_eq!(config_line.detail, config.display().to_string());
}

#[test]
fn a_malformed_config_file_fails_the_config_check() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-config-typo");
    let config = tmp.join("config.toml");
    std::fs::write(&config, "kernal = \"/k\"\n").unwrap();
    let (out, lines) = check_with(&[], &[("RUNM_CONFIG", config.as_os_str())]);
    let config_line = failed(&out, &lines, "config");
    assert!(
        config_line.detail.starts_with(&format!(
            "{} line 1: unknown field `kernal`",
            config.display()
        )),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_state_root_that_cannot_be_created_fails() {
    let _vm = vm_lock();
    let tmp = TempDir::new("check-root");
    let file = tmp.join("file");
    std::fs::write(&file, "").unwrap();
    let root = file.join("state");
    let (out, lines) = check_with(&["--root", root.to_str().unwrap()], &[]);
    let state_root = failed(&out, &lines, "state root");
    assert_eq!(
        state_root.detail,
        format!(
            "{} cannot be created: {} is not a directory",
            root.display(),
            file.display()
        )
    );
}
