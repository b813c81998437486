//! containerd drives runm unchanged: `ctr` with the runc shim v2
//! (`io.containerd.runc.v2`) and runm as its runc binary runs a task, execs into it,
//! kills and deletes it; a failure comes back as ctr's error. Each task runs in a real
//! microVM (its kernel is not the host's).

use std::time::{Duration, Instant};

use runm_tests::clients::{host_kernel_release, Client, Containerd, IMAGE};
use runm_tests::*;

/// One ctr command: a microVM boot in the emulated test host, and containerd's own work.
const T: Duration = Duration::from_secs(180);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `ctr run` with the runc shim and runm: `[OPTS] IMAGE ID CMD...`.
fn ctr_run<'a>(runm: &'a str, opts: &[&'a str], id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        runm,
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[IMAGE, id]);
    args.extend_from_slice(cmd);
    args
}

/// Waits until `ctr task ls` shows `id` as `status`.
fn wait_task(containerd: &Containerd, id: &str, status: &str) {
    let deadline = Instant::now() + T;
    loop {
        let tasks = containerd.ok(&["task", "list"]);
        let now = tasks
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id));
        if now.is_some_and(|l| l.split_whitespace().nth(2) == Some(status)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never became {status}:\n{tasks}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn ctr_runs_execs_kills_and_deletes_tasks_through_the_runc_shim() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("containerd");
    let containerd = Containerd::start(&tmp);
    let runm = runm_bin();
    let runm = runm.to_str().unwrap();

    let script = "echo hello-from-ctr; uname -r; exit 4";
    let out = containerd.run(&ctr_run(runm, &["--rm"], "t1", &["sh", "-c", script]), T);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let said = text(&out.stdout);
    let mut lines = said.lines();
    assert_eq!(lines.next(), Some("hello-from-ctr"), "{said}");
    let kernel = lines.next().unwrap_or_default();
    assert!(!kernel.is_empty(), "{said}");
    assert_ne!(
        kernel,
        host_kernel_release(),
        "the task ran on the host's kernel"
    );

    let script = "trap 'exit 9' TERM; while true; do sleep 0.2; done";
    containerd.ok(&ctr_run(runm, &["--detach"], "t2", &["sh", "-c", script]));
    wait_task(&containerd, "t2", "RUNNING");
    let exec = [
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo exec-out; exit 6",
    ];
    let out = containerd.run(&exec, T);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "exec-out\n");
    // SIGTERM (ctr's default) reaches the task's own trap, whose status ctr reports.
    containerd.ok(&["task", "kill", "t2"]);
    wait_task(&containerd, "t2", "STOPPED");
    let out = containerd.run(&["task", "delete", "t2"], T);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("exit code 9"),
        "{}",
        describe(&out)
    );
    containerd.ok(&["container", "delete", "t2"]);

    // runm's error comes back through the shim as ctr's.
    let out = containerd.run(&ctr_run(runm, &["--rm"], "t3", &["no-such-command"]), T);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = text(&out.stderr);
    assert!(err.contains("OCI runtime create failed"), "{err}");
    assert!(err.contains("no-such-command"), "{err}");

    containerd.clean_up();
    assert_no_runm_left();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_named("containerd-shim").is_empty() {
        assert!(
            Instant::now() < deadline,
            "a containerd shim outlived its task"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        mounts_under(containerd.dir()),
        Vec::<String>::new(),
        "mounts left"
    );
}
