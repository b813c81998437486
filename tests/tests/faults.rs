//! Faults, each through the real `runm` binary with the container in a real microVM:
//! `create` killed while the VM boots, the container's host process killed, its file
//! server (virtiofsd) killed or stopped. After each, `state` and `list` tell the truth
//! within seconds, and `delete --force` leaves nothing: no runm or virtiofsd process, no
//! state or socket directory, no mount.
//!
//! Not here: a VMM thread dying. Release builds abort on a panic, so a vCPU or device
//! thread that panics takes the host process with it (the case of
//! `killing_the_host_process_stops_the_container`); the device thread's own report of
//! its end is unit-tested in `vmm/src/event_loop.rs`. Nothing from outside the process
//! can end one of its threads alone.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::*;

/// Boots in the emulated test host take seconds; a whole command well under this.
const T: Duration = Duration::from_secs(150);
/// How soon a fault must show in `runm state`: generous, as the test host is emulated.
const NOTICE: Duration = Duration::from_secs(20);

/// The container's status as `runm list` has it, if it lists it.
fn listed(runm: &Runm, id: &str) -> Option<String> {
    let out = runm.run(&["list", "--format", "json"], T);
    assert!(out.status.success(), "list: {}", describe(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .map(|c| c["status"].as_str().unwrap_or("").to_string())
}

/// The container's status as `runm state` has it, if it exists.
fn stated(runm: &Runm, id: &str) -> Option<String> {
    runm.state(id)
        .map(|s| s["status"].as_str().unwrap_or("").to_string())
}

/// `state` and `list` agree: both say it is gone, or both give the same status.
fn assert_consistent(runm: &Runm, id: &str) -> Option<String> {
    let (state, list) = (stated(runm, id), listed(runm, id));
    assert_eq!(state, list, "runm state and runm list disagree about {id}");
    state
}

/// `delete --force` succeeds and leaves nothing behind.
fn assert_delete_force_leaves_nothing(runm: &Runm, tmp: &TempDir, id: &str) {
    let out = runm.run(&["delete", "--force", id], T);
    assert!(out.status.success(), "delete --force: {}", describe(&out));
    assert_eq!(assert_consistent(runm, id), None);
    runm.assert_empty();
    assert_no_runm_left();
    let mounts = mounts_under(&tmp.0);
    assert!(mounts.is_empty(), "mounts left behind: {mounts:?}");
}

/// Starts `sleep 1000` in a container; returns its state.
fn run_sleeper(runm: &Runm, tmp: &TempDir, id: &str) -> serde_json::Value {
    let b = TestBundle::busybox(tmp, "b", &["sleep", "1000"]);
    let out = runm.run_detached(tmp, "run", &["run", "-d", "--bundle", b.path(), id], T);
    assert!(out.status.success(), "run -d: {out:?}");
    let state = runm.state(id).expect("state after run -d");
    assert_eq!(state["status"], "running", "{state}");
    state
}

/// Sends `signal` to every virtiofsd (the tests run one container at a time); fails the
/// test if there is none. (virtiofsd is two processes: the server, and its parent that
/// waits for it; each ends with the other.)
fn signal_virtiofsd(signal: Signal) {
    let servers = processes_named("virtiofsd");
    assert!(!servers.is_empty(), "the container has no virtiofsd");
    for pid in servers {
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        match kill(pid, signal) {
            // Gone already with the other one.
            Ok(()) | Err(nix::Error::ESRCH) => {}
            Err(e) => panic!("cannot send {signal} to virtiofsd {pid}: {e}"),
        }
    }
}

#[test]
fn killing_create_while_the_vm_boots_leaves_a_consistent_state_and_delete_cleans_up() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("faults-create");
    let runm = Runm::new(&tmp);
    let b = TestBundle::busybox(&tmp, "b", &["sleep", "1000"]);
    let id = "c-create-killed";
    let mut create = runm
        .command(&["create", "--bundle", b.path(), id])
        .stdout(std::fs::File::create(tmp.join("create.out")).unwrap())
        .stderr(std::fs::File::create(tmp.join("create.err")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        create.try_wait().unwrap().is_none(),
        "create ended within a second, before its VM could boot"
    );
    send_signal(create.id(), "KILL").unwrap();
    create.wait().unwrap();
    // Its host process notices that nobody waits for the container and gives up.
    let start = Instant::now();
    while !processes_running(&runm_bin()).is_empty() {
        assert!(
            start.elapsed() < NOTICE,
            "runm processes still run {NOTICE:?} after create was killed: {:?}\n{}",
            processes_running(&runm_bin()),
            std::fs::read_to_string(tmp.join("create.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Some(status) = assert_consistent(&runm, id) {
        assert_ne!(status, "running", "nothing runs it");
    }
    assert_delete_force_leaves_nothing(&runm, &tmp, id);
}

#[test]
fn killing_the_host_process_stops_the_container() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("faults-host");
    let runm = Runm::new(&tmp);
    let id = "c-host-killed";
    let state = run_sleeper(&runm, &tmp, id);
    let pid = u32::try_from(state["pid"].as_i64().expect("a pid")).unwrap();
    send_signal(pid, "KILL").unwrap();
    assert_eq!(runm.wait_status(id, "stopped", NOTICE), "stopped");
    assert_eq!(assert_consistent(&runm, id).as_deref(), Some("stopped"));
    let out = runm.run(&["exec", id, "true"], T);
    assert!(!out.status.success(), "exec: {}", describe(&out));
    assert_delete_force_leaves_nothing(&runm, &tmp, id);
}

#[test]
fn killing_virtiofsd_stops_the_container_and_exec_fails_fast() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("faults-virtiofsd");
    let runm = Runm::new(&tmp);
    let id = "c-fs-killed";
    run_sleeper(&runm, &tmp, id);
    signal_virtiofsd(Signal::SIGKILL);
    assert_eq!(runm.wait_status(id, "stopped", NOTICE), "stopped");
    assert_eq!(assert_consistent(&runm, id).as_deref(), Some("stopped"));
    let state = runm.state(id).unwrap();
    assert_eq!(state["pid"], 0, "the host process is gone: {state}");
    // The host process's log (its stderr is run's) says what happened.
    let log = std::fs::read_to_string(tmp.join("run.err")).unwrap();
    assert!(
        log.contains("the container's file server (virtiofsd) died"),
        "{log}"
    );

    let start = Instant::now();
    let out = runm.run(
        &["exec", id, "cat", "/etc/hostname"],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "exec: {}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("stopped"), "{}", describe(&out));
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_delete_force_leaves_nothing(&runm, &tmp, id);
}

#[test]
fn the_agent_answers_while_the_containers_files_hang_and_exec_gets_an_error() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("faults-fs-hangs");
    let runm = Runm::new(&tmp);
    let id = "c-fs-stopped";
    run_sleeper(&runm, &tmp, id);
    // A stopped file server: alive, so nothing ends, but the guest's files hang.
    signal_virtiofsd(Signal::SIGSTOP);
    let start = Instant::now();
    let out = runm.run(
        &["exec", id, "cat", "/etc/hostname"],
        Duration::from_secs(45),
    );
    let took = start.elapsed();
    assert!(!out.status.success(), "exec: {}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("do not answer") || said.contains("does not answer"),
        "{}",
        describe(&out)
    );
    assert!(took < Duration::from_secs(45), "exec took {took:?}");
    // Meanwhile the agent still answers what does not need the container's files.
    let out = runm.run(&["ps", "--format", "json", id], Duration::from_secs(30));
    assert!(out.status.success(), "ps: {}", describe(&out));
    assert_eq!(stated(&runm, id).as_deref(), Some("running"));
    // A stopped process keeps pending signals, its parent-death signal too.
    signal_virtiofsd(Signal::SIGCONT);
    assert_delete_force_leaves_nothing(&runm, &tmp, id);
}
