//! A container's namespaces through the `runm` binary with real microVMs: state's pid
//! (the host process) lives in new mount, UTS, IPC and cgroup namespaces where the
//! config asks for new ones and in the host's where the config shares them; hooks run
//! in the host's; a path naming another runm container's namespace runs with a warning,
//! and a path the VM cannot honour is refused naming the field, leaving nothing behind.

use std::time::Duration;

use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::*;

const T: Duration = Duration::from_secs(150);
/// The namespaces a running process can take new ones of (network: see network.rs).
const KINDS: [&str; 5] = ["mnt", "uts", "ipc", "cgroup", "net"];

/// `TYPE:[inode]` of process `pid`'s namespace of `kind`.
fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// Creates `id` from `b` (detached) and returns state's pid.
fn create(runm: &Runm, tmp: &TempDir, b: &TestBundle, id: &str) -> String {
    let created = runm.run_detached(tmp, id, &["create", "--bundle", b.path(), id], T);
    assert!(created.status.success(), "create: {created:?}");
    runm.state(id).expect("state after create")["pid"].to_string()
}

/// Sets (or adds) the namespace entry of `typ` to join `path`.
fn join(b: &mut TestBundle, typ: &str, path: &str) {
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != typ);
        ns.push(serde_json::json!({"type": typ, "path": path}));
    });
}

#[test]
fn the_host_process_takes_the_namespaces_the_config_asks_for_and_hooks_keep_the_hosts() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("ns-own");
    let runm = Runm::new(&tmp);
    let host: Vec<String> = KINDS.iter().map(|k| ns("self", k)).collect();

    // runm spec's config asks for new ones of all five.
    let record = tmp.join("hook-ns");
    let script = format!(
        "for k in {}; do readlink /proc/self/ns/$k; done > {}",
        KINDS.join(" "),
        record.display()
    );
    let mut b = TestBundle::busybox(&tmp, "b", &["sleep", "60"]);
    b.edit(|c| {
        c["hooks"] = serde_json::json!({"createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", script]}]});
    });
    let pid = create(&runm, &tmp, &b, "c-own");
    for (kind, host) in KINDS.iter().zip(&host) {
        assert_ne!(
            &ns(&pid, kind),
            host,
            "state's pid is in the host's {kind} namespace"
        );
    }
    let hook = std::fs::read_to_string(&record).expect("the hook ran");
    let hook: Vec<&str> = hook.lines().collect();
    assert_eq!(hook, host, "the hook did not run in the host's namespaces");

    // Another container shares c-own's IPC and UTS namespaces by path, as podman's
    // `--ipc container:` and CRI's pods pass them: it runs (in a VM of its own), and
    // runm says the namespaces are not shared.
    let mut b2 = TestBundle::busybox(&tmp, "b2", &["sh", "-c", "echo ran"]);
    join(&mut b2, "ipc", &format!("/proc/{pid}/ns/ipc"));
    join(&mut b2, "uts", &format!("/proc/{pid}/ns/uts"));
    let out = runm.run(&["run", "--bundle", b2.path(), "c-shares"], T);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("linux.namespaces[") && err.contains("another runm container"),
        "no warning that the namespaces are not shared: {}",
        describe(&out)
    );
    let out = runm.run(&["delete", "--force", "c-own"], T);
    assert!(out.status.success(), "{}", describe(&out));

    // A config that shares the host's IPC and UTS namespaces (no entry for them): the
    // host process stays in those.
    let mut b3 = TestBundle::busybox(&tmp, "b3", &["sleep", "60"]);
    b3.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "ipc" && n["type"] != "uts");
        c.as_object_mut().unwrap().remove("hostname");
    });
    let pid = create(&runm, &tmp, &b3, "c-shared");
    assert_eq!(ns(&pid, "ipc"), host[2]);
    assert_eq!(ns(&pid, "uts"), host[1]);
    assert_ne!(ns(&pid, "mnt"), host[0]);
    let out = runm.run(&["delete", "--force", "c-shared"], T);
    assert!(out.status.success(), "{}", describe(&out));
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn namespace_paths_a_vm_cannot_honour_are_refused_naming_the_field() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("ns-paths");
    let runm = Runm::new(&tmp);
    let not_ns = tmp.join("not-a-namespace");
    std::fs::write(&not_ns, "").unwrap();
    let not_ns = not_ns.to_str().unwrap();
    for (n, (typ, path, says)) in [
        ("ipc", "/proc/1/ns/ipc", "a microVM cannot join it"),
        ("cgroup", "/proc/1/ns/ipc", "of type ipc, not cgroup"),
        ("uts", not_ns, "is not a namespace"),
        ("mount", "/nonexistent/ns", "No such file"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = TestBundle::busybox(&tmp, &format!("b{n}"), &["true"]);
        join(&mut b, typ, path);
        let id = format!("c-{n}");
        let out = runm.run(&["run", "--bundle", b.path(), &id], T);
        assert!(!out.status.success(), "{typ} {path}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("linux.namespaces[") && err.contains(".path") && err.contains(says),
            "{typ} {path}: {}",
            describe(&out)
        );
        runm.assert_empty();
    }
    assert_no_runm_left();
}
