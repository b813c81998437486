//! The OCI lifecycle through the `runm` binary, each container in a real microVM:
//! run, create/start/state/kill/delete, exec, the console socket, the config's effects
//! seen from inside, a memory limit, and bad input that must leave nothing behind.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::tty::{receive_fd, run_attached, StdinKind, StdoutKind};
use runm_tests::*;

/// Boots in the emulated test host take seconds; a whole command well under this.
const T: Duration = Duration::from_secs(150);

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_relays_stdio_and_returns_the_exit_status() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-run");
    let runm = Runm::new(&tmp);
    let b = TestBundle::busybox(
        &tmp,
        "b",
        &[
            "sh",
            "-c",
            "read line; echo got:$line; echo to-stderr >&2; exit 3",
        ],
    );
    let out = runm.run_with_stdin(&["run", "--bundle", b.path(), "c-run"], b"piped in\n", T);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(stdout(&out).contains("got:piped in"), "{}", describe(&out));
    assert!(stderr(&out).contains("to-stderr"), "{}", describe(&out));
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn run_returns_137_when_the_process_is_killed() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-137");
    let runm = Runm::new(&tmp);
    let b = TestBundle::busybox(&tmp, "b", &["sh", "-c", "echo up; exec sleep 1000"]);
    let id = "c-137";
    let out_path = tmp.join("run.out");
    let mut run = runm
        .command(&["run", "--bundle", b.path(), id])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    assert_eq!(runm.wait_status(id, "running", T), "running");
    // Killed once its output is out: "running" comes before the shell's first line.
    let start = Instant::now();
    while !std::fs::read_to_string(&out_path).unwrap().contains("up") {
        assert!(start.elapsed() < T, "no output from the container");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = runm.run(&["kill", id, "KILL"], T);
    assert!(out.status.success(), "kill: {}", describe(&out));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = run.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < T, "run did not return after SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(137), "{status}");
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn create_start_state_kill_delete_walk_the_oci_states() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-lifecycle");
    let runm = Runm::new(&tmp);
    let mut b = TestBundle::busybox(
        &tmp,
        "b",
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; echo started; while true; do sleep 1; done",
        ],
    );
    // Host-side hooks, each saving the state it got on stdin.
    let hook = |name: &str| {
        let path = tmp.join(&format!("hook-{name}.json"));
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", path.display())]})
    };
    // A failing poststart or poststop hook is a warning: the next one still runs, and
    // start and delete succeed (the spec's words).
    let failing = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name}-failed >&2; exit 3")]});
    let hooks = serde_json::json!({
        "createRuntime": [hook("createRuntime")],
        "poststart": [failing("poststart"), hook("poststart")],
        "poststop": [failing("poststop"), hook("poststop")],
    });
    b.edit(|c| c["hooks"] = hooks);
    let hook_state = |name: &str| -> serde_json::Value {
        let text = std::fs::read_to_string(tmp.join(&format!("hook-{name}.json")))
            .unwrap_or_else(|e| panic!("the {name} hook did not run: {e}"));
        serde_json::from_str(&text).unwrap()
    };
    let id = "c-life";
    let pid_file = tmp.join("pid");
    let pid_file_s = pid_file.to_str().unwrap();
    let created = runm.run_detached(
        &tmp,
        "create",
        &["create", "--bundle", b.path(), "--pid-file", pid_file_s, id],
        T,
    );
    assert!(created.status.success(), "create: {created:?}");
    let state = runm.state(id).expect("state after create");
    assert_eq!(state["status"], "created", "{state}");
    assert_eq!(state["id"], id);
    assert_eq!(hook_state("createRuntime")["id"], id);
    let pid: i64 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert_eq!(state["pid"], pid, "{state}");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let dup = runm.run(&["create", "--bundle", b.path(), id], T);
    assert!(!dup.status.success());
    assert!(
        stderr(&dup).contains("already exists"),
        "{}",
        describe(&dup)
    );

    let out = runm.run(&["start", id], T);
    assert!(out.status.success(), "start: {}", describe(&out));
    assert_eq!(runm.state(id).unwrap()["status"], "running");
    assert_eq!(hook_state("poststart")["status"], "running");
    assert!(
        stderr(&out).contains("poststart hook /bin/sh failed")
            && stderr(&out).contains("poststart-failed"),
        "no warning for the failed poststart hook: {}",
        describe(&out)
    );
    let again = runm.run(&["start", id], T);
    assert!(
        stderr(&again).contains("already running"),
        "{}",
        describe(&again)
    );
    let del = runm.run(&["delete", id], T);
    assert!(stderr(&del).contains("not stopped"), "{}", describe(&del));

    // exec without and with a terminal, and as another user.
    let out = runm.run(&["exec", id, "sh", "-c", "echo exec-ok; exit 5"], T);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert!(stdout(&out).contains("exec-ok"), "{}", describe(&out));
    // A terminal needs one on the caller's side too, as with runc: stdin a pty.
    let tty = run_attached(
        runm.command(&["exec", "-t", id, "tty"]),
        StdinKind::Pty,
        StdoutKind::Pipe,
        T,
    );
    assert_eq!(tty.status, Some(0), "{tty:?}");
    assert!(tty.output.contains("/dev/pts/"), "{tty:?}");
    let out = runm.run(
        &[
            "exec",
            "--user",
            "1000:1001",
            id,
            "sh",
            "-c",
            "echo $(id -u):$(id -g)",
        ],
        T,
    );
    assert!(stdout(&out).contains("1000:1001"), "{}", describe(&out));

    let out = runm.run(&["ps", "--format", "json", id], T);
    let pids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(!pids.is_empty(), "{}", describe(&out));

    let out = runm.run(&["events", "--stats", id], T);
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(event["type"], "stats", "{}", describe(&out));
    assert!(
        event["data"]["pids"]["current"].as_u64().unwrap_or(0) >= 1,
        "{event}"
    );
    assert!(
        event["data"]["memory"]["usage"]["usage"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{event}"
    );

    let out = runm.run(&["pause", id], T);
    assert!(out.status.success(), "pause: {}", describe(&out));
    assert_eq!(runm.state(id).unwrap()["status"], "paused");
    let out = runm.run(&["resume", id], T);
    assert!(out.status.success(), "resume: {}", describe(&out));
    assert_eq!(runm.state(id).unwrap()["status"], "running");

    let out = runm.run(&["list", "--format", "json"], T);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id, "{list}");

    let out = runm.run(&["kill", id, "TERM"], T);
    assert!(out.status.success(), "kill: {}", describe(&out));
    assert_eq!(
        runm.wait_status(id, "stopped", Duration::from_secs(60)),
        "stopped"
    );
    let out = runm.run(&["kill", id, "KILL"], T);
    assert!(stderr(&out).contains("not running"), "{}", describe(&out));
    let del = runm.run(&["delete", id], T);
    assert!(del.status.success(), "delete: {}", describe(&del));
    assert!(runm.state(id).is_none());
    assert_eq!(hook_state("poststop")["status"], "stopped");
    assert!(
        stderr(&del).contains("poststop hook /bin/sh failed"),
        "no warning for the failed poststop hook: {}",
        describe(&del)
    );
    let container_out = std::fs::read_to_string(tmp.join("create.out")).unwrap();
    assert!(container_out.contains("started"), "{container_out}");
    runm.assert_empty();
    assert_no_runm_left();
}

/// Docker's state root (`/run/docker/runtime-runm/moby`) and a 64-character id make
/// socket paths longer than a Unix socket address holds.
#[test]
fn state_directories_too_deep_for_a_socket_address_work() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-deep");
    let mut runm = Runm::new(&tmp);
    runm.root = tmp.join("state/runtime-runm/moby/a-root-as-deep-as-a-client-makes-it");
    let id = "f".repeat(64);
    let b = TestBundle::busybox(&tmp, "b", &["sleep", "1000"]);
    let out = runm.run_detached(&tmp, "run", &["run", "-d", "--bundle", b.path(), &id], T);
    assert!(out.status.success(), "run -d: {out:?}");
    let out = runm.run(&["exec", &id, "echo", "exec-in-a-deep-root"], T);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(stdout(&out), "exec-in-a-deep-root\n");
    let out = runm.run(&["delete", "--force", &id], T);
    assert!(out.status.success(), "{}", describe(&out));
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn a_guest_lost_mid_request_ends_exec_and_delete_force_cleans_up() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-lost");
    let runm = Runm::new(&tmp);
    let b = TestBundle::busybox(&tmp, "b", &["sleep", "1000"]);
    let id = "c-lost";
    let out = runm.run_detached(&tmp, "run", &["run", "-d", "--bundle", b.path(), id], T);
    assert!(out.status.success(), "run -d: {out:?}");
    let mut exec = runm
        .command(&["exec", id, "sleep", "1000"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let out = runm.run(&["delete", "--force", id], T);
    assert!(out.status.success(), "delete --force: {}", describe(&out));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = exec.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "exec outlived its VM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "{status}");
    runm.assert_empty();
    assert_no_runm_left();
}

/// Receives the pty master runm sends to the console socket.
fn receive_master(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    receive_fd(&conn).expect("runm sent a file descriptor")
}

#[test]
fn the_console_socket_receives_a_working_pty() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-console");
    let runm = Runm::new(&tmp);
    let mut b = TestBundle::busybox(&tmp, "b", &["sh"]);
    b.edit(|c| c["process"]["terminal"] = true.into());
    let sock = tmp.join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || receive_master(&listener));
    let id = "c-tty";
    let out = runm.run_detached(
        &tmp,
        "create",
        &[
            "create",
            "--bundle",
            b.path(),
            "--console-socket",
            sock.to_str().unwrap(),
            id,
        ],
        T,
    );
    assert!(out.status.success(), "create: {out:?}");
    let master = std::fs::File::from(receiver.join().unwrap());
    let out = runm.run(&["start", id], T);
    assert!(out.status.success(), "start: {}", describe(&out));
    let mut writer = master.try_clone().unwrap();
    writer.write_all(b"echo $((6*7))-$(tty)\n").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = master;
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).to_string();
            if text.contains("42-/dev/") {
                let _ = tx.send(text);
                return;
            }
        }
    });
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the shell answered on the pty");
    assert!(
        text.contains("42-/dev/pts/") || text.contains("42-/dev/console"),
        "{text}"
    );
    writer.write_all(b"exit 4\n").unwrap();
    assert_eq!(
        runm.wait_status(id, "stopped", Duration::from_secs(60)),
        "stopped"
    );
    let out = runm.run(&["delete", id], T);
    assert!(out.status.success(), "delete: {}", describe(&out));
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn the_config_takes_effect_inside() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-config");
    let runm = Runm::new(&tmp);
    let script = "echo env=$FOO; echo cwd=$(pwd); echo groups=$(id -G); \
                  echo host=$(hostname); echo nofile=$(ulimit -n); grep CapEff /proc/self/status; \
                  touch /rootfile 2>/dev/null && echo root=writable || echo root=readonly; \
                  touch /tmp/f && echo tmp=writable; \
                  mkdir /tmp/d 2>&1 || echo mkdir=denied";
    let mut b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    b.edit(|c| {
        let p = &mut c["process"];
        p["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
        p["cwd"] = "/tmp".into();
        p["user"] = serde_json::json!({"uid": 0, "gid": 0, "additionalGids": [2000]});
        p["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 123, "soft": 100}]);
        let caps = serde_json::json!(["CAP_CHOWN", "CAP_DAC_OVERRIDE"]);
        p["capabilities"] = serde_json::json!({
            "bounding": caps, "effective": caps, "permitted": caps
        });
        c["hostname"] = "runm-test".into();
        c["root"]["readonly"] = true.into();
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let out = runm.run(&["run", "--bundle", b.path(), "c-config"], T);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    for want in [
        "env=bar",
        "cwd=/tmp",
        "groups=0 2000",
        "host=runm-test",
        "nofile=100",
        "CapEff:\t0000000000000003",
        "root=readonly",
        "tmp=writable",
        "mkdir=denied",
    ] {
        assert!(text.contains(want), "missing {want:?}\n{}", describe(&out));
    }
    assert!(
        text.contains("Operation not permitted"),
        "{}",
        describe(&out)
    );
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn a_memory_limit_is_enforced_by_the_oom_killer() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-oom");
    let runm = Runm::new(&tmp);
    // tail keeps the one endless "line" of /dev/zero: its memory grows until the
    // cgroup's OOM killer ends it.
    let mut b = TestBundle::busybox(&tmp, "b", &["sh", "-c", "echo before; exec tail /dev/zero"]);
    b.edit(|c| {
        c["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 48 << 20, "swap": 48 << 20}});
    });
    let out = runm.run(&["run", "--bundle", b.path(), "c-oom"], T);
    assert!(stdout(&out).contains("before"), "{}", describe(&out));
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn cpu_limits_beyond_the_host_get_its_cpus_and_keep_the_cgroup_limit() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-cpus");
    let runm = Runm::new(&tmp);
    // A million CPUs' worth of quota: the VM gets the host's CPUs, the cgroup the quota.
    let script = "echo nproc=$(nproc); echo cpu.max=$(cat /sys/fs/cgroup/cpu.max)";
    let mut b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    b.edit(|c| {
        c["linux"]["resources"] =
            serde_json::json!({"cpu": {"quota": 100_000_000_000_i64, "period": 100000}});
    });
    let out = runm.run(&["run", "--bundle", b.path(), "c-cpus"], T);
    assert!(out.status.success(), "{}", describe(&out));
    let host_cpus = std::thread::available_parallelism().unwrap().get();
    let text = stdout(&out);
    assert!(
        text.contains(&format!("nproc={host_cpus}\n")),
        "want {host_cpus} vCPUs\n{}",
        describe(&out)
    );
    assert!(
        text.contains("cpu.max=100000000000 100000"),
        "{}",
        describe(&out)
    );
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn bad_input_is_named_and_leaves_nothing_behind() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("oci-bad");
    let runm = Runm::new(&tmp);
    let out = runm.run(&["features"], T);
    let features: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(features["linux"]["seccomp"]["enabled"], true, "{features}");
    let out = runm.run(&["spec", "--rootless"], T);
    assert!(stderr(&out).contains("rootless"), "{}", describe(&out));

    let missing = runm.run(&["create", "--bundle", "/nonexistent-bundle", "x"], T);
    assert!(
        stderr(&missing).contains("/nonexistent-bundle"),
        "{}",
        describe(&missing)
    );

    let mut b = TestBundle::busybox(&tmp, "b", &["true"]);
    b.edit(|c| c["process"]["user"]["uid"] = "root".into());
    let bad = runm.run(&["create", "--bundle", b.path(), "x"], T);
    assert!(
        stderr(&bad).contains("`process.user.uid`"),
        "{}",
        describe(&bad)
    );

    // What the host can judge is refused before a VM boots, naming the field.
    let mut b = TestBundle::busybox(&tmp, "b4", &["true"]);
    b.edit(|c| c["ociVersion"] = "banana".into());
    let bad = runm.run(&["create", "--bundle", b.path(), "x"], T);
    assert!(stderr(&bad).contains("`ociVersion`"), "{}", describe(&bad));
    let mut b = TestBundle::busybox(&tmp, "b5", &["true"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(serde_json::json!({"type": "pid"}));
    });
    let bad = runm.run(&["create", "--bundle", b.path(), "x"], T);
    assert!(
        stderr(&bad).contains("`linux.namespaces[") && stderr(&bad).contains("twice"),
        "{}",
        describe(&bad)
    );
    runm.assert_empty();

    for cmd in ["state", "start", "kill", "delete", "pause", "ps"] {
        let out = runm.run(&[cmd, "nope"], T);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("nope does not exist"),
            "{cmd}: {}",
            describe(&out)
        );
    }
    // As runc: clients clean up after a failed create with `delete --force`.
    let out = runm.run(&["delete", "--force", "nope"], T);
    assert!(out.status.success(), "{}", describe(&out));

    // The guest's refusal comes back as a clear message, and nothing is left.
    let b = TestBundle::busybox(&tmp, "b3", &["/bin/nonexistent"]);
    let out = runm.run(&["run", "--bundle", b.path(), "z"], T);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("/bin/nonexistent"),
        "{}",
        describe(&out)
    );
    runm.assert_empty();
    assert_no_runm_left();

    // A VM that cannot boot: its kernel is garbage.
    let b = TestBundle::busybox(&tmp, "b2", &["true"]);
    runm.assert_unbootable_fails(&tmp, &["create", "--bundle", b.path(), "y"]);
    runm.assert_empty();
    assert_no_runm_left();
}
