//! Terminals (`process.terminal`) as under runc: each case runs the same bundle through
//! runc and through runm (a microVM), and both must give the same answer: the exit
//! status and the output arrive whatever the caller's stdin is (a pty that is or is not
//! its controlling terminal, a pipe that never closes, /dev/null, closed) and whatever
//! the console-socket receiver does with the master (reads it, or never touches it).
//! Where runc refuses a combination (no terminal to relay through, a console socket in
//! the foreground), runm must refuse it too.
//!
//! runc 1.1.5 (Debian 12's) cannot exec in the test host at all (every exec fails with
//! `stat <path>: no such file or directory`), so runm's `exec` is compared with runc's
//! `run` of the same process from the same caller: runc decides how to relay a terminal
//! the same way for both.

use std::time::Duration;

use runm_tests::bundle::TestBundle;
use runm_tests::tty::{
    run_attached, ConsoleSocket, ReceiverMode, Runtime, StdinKind, StdoutKind, ALL_STDINS,
};
use runm_tests::{assert_no_runm_left, require_kvm, vm_lock, TempDir};

/// Deadline for one command (a runm run boots a VM, slowly where KVM is emulated).
const T: Duration = Duration::from_secs(120);
const SCRIPT: &str = "echo Hello World; exit 3";

fn runtimes(tmp: &TempDir) -> [Runtime; 2] {
    [
        Runtime::runc(tmp.join("runc-state")),
        Runtime::runm(tmp.join("runm-state")),
    ]
}

/// A busybox bundle whose process has a terminal and runs `args`.
fn tty_bundle(tmp: &TempDir, name: &str, args: &[&str]) -> TestBundle {
    let mut b = TestBundle::busybox(tmp, name, args);
    b.edit(|c| c["process"]["terminal"] = true.into());
    b
}

/// The part of an outcome both runtimes must agree on: the status, and whether the
/// greeting arrived (a pty turns its newline into CRLF, so lines are compared).
fn outcome(status: Option<i32>, output: &str) -> (Option<i32>, bool) {
    (
        status,
        output.lines().any(|l| l.trim_end() == "Hello World"),
    )
}

/// Whether the caller has a terminal runc relays through (stderr is a pipe here).
fn has_terminal(stdin: StdinKind, stdout: StdoutKind) -> bool {
    matches!(stdin, StdinKind::ControllingPty | StdinKind::Pty) || stdout == StdoutKind::Pty
}

#[test]
fn a_detached_shell_keeps_running_whatever_its_console_receiver_does() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("tty-detached");
    let b = tty_bundle(&tmp, "b", &["sh"]);
    // The caller of `run -d` with no terminal, or in a terminal's session (the host
    // process then shares a session whose controlling terminal is a pty).
    let callers = [
        (ReceiverMode::Drain, StdinKind::Null),
        (ReceiverMode::Hold, StdinKind::Null),
        (ReceiverMode::Drain, StdinKind::ControllingPty),
    ];
    for (n, (mode, caller)) in callers.into_iter().enumerate() {
        let mut seen = Vec::new();
        for rt in runtimes(&tmp) {
            let id = format!("sh-{n}");
            let console = ConsoleSocket::listen(&tmp.join(&format!("{}.sock", rt.name)), mode);
            let run = rt.command(&[
                "run",
                "-d",
                "--bundle",
                b.path(),
                "--console-socket",
                console.path_str(),
                &id,
            ]);
            let out = run_attached(run, caller, StdoutKind::Pipe, T);
            assert_eq!(
                out.status,
                Some(0),
                "{} run -d ({caller:?}): {out:?}",
                rt.name
            );
            // The shell has a while to end (it ended within a second), and must not.
            std::thread::sleep(Duration::from_secs(5));
            let status = rt.status(&id);
            let got = status.clone();
            eprintln!("{} {mode:?}: {got:?}", rt.name);
            assert_eq!(got.as_deref(), Some("running"), "{} {mode:?}", rt.name);
            if rt.name == "runm" {
                let exec = rt.command(&["exec", &id, "/bin/echo", "exec-ok"]);
                let exec = runm_tests::run_command(exec, T, None);
                assert_eq!(
                    String::from_utf8_lossy(&exec.stdout).trim(),
                    "exec-ok",
                    "runm exec in the shell's container ({mode:?}): {exec:?}"
                );
                assert_eq!(rt.status(&id).as_deref(), Some("running"));
            }
            rt.remove(&id);
            if mode == ReceiverMode::Hold {
                assert_eq!(console.held(), 1, "{}: the master was sent", rt.name);
            }
            seen.push(got);
        }
        assert_eq!(seen[0], seen[1], "runc and runm agree ({mode:?})");
    }
    assert_no_runm_left();
}

#[test]
fn a_foreground_terminal_run_prints_and_returns_whatever_its_stdin() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("tty-run");
    let b = tty_bundle(&tmp, "b", &["/bin/echo", "Hello", "World"]);
    let mut cases: Vec<(StdinKind, StdoutKind)> =
        ALL_STDINS.iter().map(|s| (*s, StdoutKind::Pipe)).collect();
    cases.push((StdinKind::ControllingPty, StdoutKind::Pty));
    cases.push((StdinKind::Pty, StdoutKind::Pty));
    cases.push((StdinKind::Pipe, StdoutKind::Pty));
    for (i, (stdin, stdout)) in cases.into_iter().enumerate() {
        let mut seen = Vec::new();
        for rt in runtimes(&tmp) {
            let id = format!("echo-{i}");
            let run = rt.command(&["run", "--bundle", b.path(), &id]);
            let done = run_attached(run, stdin, stdout, T);
            rt.remove(&id);
            let got = outcome(done.status, &done.output);
            eprintln!(
                "{} stdin {stdin:?} stdout {stdout:?}: {got:?} {:?}",
                rt.name, done.stderr
            );
            seen.push((got, done));
        }
        let (runc, runm) = (&seen[0], &seen[1]);
        assert_eq!(
            runc.0, runm.0,
            "runc and runm agree ({stdin:?}, {stdout:?}): {seen:?}"
        );
        if has_terminal(stdin, stdout) {
            assert_eq!(runm.0, (Some(0), true), "{stdin:?}, {stdout:?}: {seen:?}");
            if stdout == StdoutKind::Pipe {
                // The bytes themselves: runc turns the pty's CRLF mapping off.
                assert_eq!(runc.1.output, runm.1.output, "{stdin:?}: the same bytes");
            }
        } else {
            // No terminal to relay through: refused, with runc's reason.
            assert!(runm.1.stderr.contains("terminal"), "{:?}", runm.1);
        }
    }
    assert_no_runm_left();
}

#[test]
fn a_console_socket_in_the_foreground_is_refused_as_by_runc() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("tty-run-socket");
    let b = tty_bundle(&tmp, "b", &["sh", "-c", SCRIPT]);
    let mut seen = Vec::new();
    for rt in runtimes(&tmp) {
        let id = "cs";
        let console =
            ConsoleSocket::listen(&tmp.join(&format!("{}.sock", rt.name)), ReceiverMode::Drain);
        let args = [
            "run",
            "--bundle",
            b.path(),
            "--console-socket",
            console.path_str(),
            id,
        ];
        let done = run_attached(rt.command(&args), StdinKind::Null, StdoutKind::Pipe, T);
        let known = rt.status(id);
        rt.remove(id);
        eprintln!("{}: {done:?}", rt.name);
        assert!(done.stderr.contains("console"), "{}: {done:?}", rt.name);
        seen.push((done.status, known));
    }
    assert_eq!(seen[0], seen[1], "runc and runm agree");
    assert_eq!(seen[1], (Some(1), None), "refused, and nothing left");
    assert_no_runm_left();
}

#[test]
fn a_terminal_exec_returns_its_status_and_output_whatever_its_stdin() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("tty-exec");
    let b = TestBundle::busybox(&tmp, "b", &["sleep", "600"]);
    // runc's answer for the same process and caller (see the top of the file).
    let ref_bundle = tty_bundle(&tmp, "ref", &["sh", "-c", SCRIPT]);
    let [runc, runm] = runtimes(&tmp);
    let id = "exec-host";
    let run = runm.command(&["run", "-d", "--bundle", b.path(), id]);
    // Its stdio is the container's: a file, so that waiting does not wait for it.
    let log = std::fs::File::create(tmp.join("run.log")).unwrap();
    assert_eq!(run_attached_to(run, log), Some(0), "runm run -d");
    let exec_args = ["exec", "-t", id, "/bin/sh", "-c", SCRIPT];
    let cases = ALL_STDINS
        .iter()
        .map(|s| (*s, StdoutKind::Pipe))
        .chain([(StdinKind::Pipe, StdoutKind::Pty)]);
    for (i, (stdin, stdout)) in cases.enumerate() {
        let rid = format!("ref-{i}");
        let run = runc.command(&["run", "--bundle", ref_bundle.path(), &rid]);
        let by_runc = run_attached(run, stdin, stdout, T);
        runc.remove(&rid);
        let by_runm = run_attached(runm.command(&exec_args), stdin, stdout, T);
        let got = (
            outcome(by_runc.status, &by_runc.output),
            outcome(by_runm.status, &by_runm.output),
        );
        eprintln!("exec -t, stdin {stdin:?}, stdout {stdout:?}: runc run, runm exec: {got:?}");
        assert_eq!(
            got.0, got.1,
            "{stdin:?}, {stdout:?}: {by_runc:?} {by_runm:?}"
        );
        if has_terminal(stdin, stdout) {
            assert_eq!(got.1, (Some(3), true), "{stdin:?}: {by_runm:?}");
        }
    }
    // Detached, with a console socket: the output reaches a receiver that reads, and a
    // receiver that never reads leaves the container running (runm alone: see above).
    for mode in [ReceiverMode::Drain, ReceiverMode::Hold] {
        let console = ConsoleSocket::listen(&tmp.join(&format!("x-{mode:?}.sock")), mode);
        let mut args = vec!["exec", "-t", "-d", "--console-socket", console.path_str()];
        args.extend_from_slice(&exec_args[2..]);
        let log = std::fs::File::create(tmp.join("exec.log")).unwrap();
        assert_eq!(
            run_attached_to(runm.command(&args), log),
            Some(0),
            "exec -d {mode:?}"
        );
        if mode == ReceiverMode::Drain {
            let read = console.wait_for("Hello World", Duration::from_secs(60));
            assert!(outcome(None, &read).1, "exec -d output: {read:?}");
        }
        let after = runm_tests::run_command(runm.command(&["exec", id, "/bin/true"]), T, None);
        assert!(after.status.success(), "{mode:?}: {after:?}");
        assert_eq!(runm.status(id).as_deref(), Some("running"), "{mode:?}");
    }
    runm.remove(id);
    assert_no_runm_left();
}

/// Runs `cmd` (stdin /dev/null) with its stdout and stderr in `log`; its exit status.
fn run_attached_to(mut cmd: std::process::Command, log: std::fs::File) -> Option<i32> {
    cmd.stdout(log.try_clone().unwrap()).stderr(log);
    let mut child = cmd.spawn().expect("spawn");
    let end = std::time::Instant::now() + T;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code();
        }
        if std::time::Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
