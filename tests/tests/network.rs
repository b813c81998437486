//! The container's network namespace on the host, through the `runm` binary with real
//! microVMs: state's pid lives in it (a new one, or the one a path names), hooks run in
//! the host's, host networking is refused, and the host's own links never change.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::*;

const T: Duration = Duration::from_secs(150);

/// `net:[inode]` of a process's network namespace.
fn netns_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/net: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// The host's links, addresses and routes, to prove runm changed none of them.
fn host_network() -> String {
    let mut all = String::new();
    for args in [&["-o", "link"][..], &["-o", "addr"], &["route"]] {
        let out = Command::new("ip").args(args).output().expect("ip");
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// Creates `id` from `b` (detached) and returns state's pid.
fn create(runm: &Runm, tmp: &TempDir, b: &TestBundle, id: &str) -> String {
    let created = runm.run_detached(tmp, id, &["create", "--bundle", b.path(), id], T);
    assert!(created.status.success(), "create: {created:?}");
    let state = runm.state(id).expect("state after create");
    state["pid"].to_string()
}

#[test]
fn the_host_process_lives_in_the_containers_network_namespace() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("network-ns");
    let runm = Runm::new(&tmp);
    let before = host_network();
    let host = netns_of("self");

    // No path (Docker): a new namespace; the createRuntime hook runs in the host's.
    let record = tmp.join("hook-netns");
    let mut b = TestBundle::busybox(&tmp, "b", &["sleep", "60"]);
    let script = format!("readlink /proc/self/ns/net > {}", record.display());
    b.edit(|c| {
        c["hooks"] = serde_json::json!({"createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", script]}]});
    });
    let pid = create(&runm, &tmp, &b, "c-new");
    let own = netns_of(&pid);
    assert_ne!(
        own, host,
        "the host process is in the host's network namespace"
    );
    let hook = std::fs::read_to_string(&record).expect("the hook ran");
    assert_eq!(
        hook.trim(),
        host,
        "the hook ran outside the host's namespace"
    );
    let out = runm.run(&["delete", "--force", "c-new"], T);
    assert!(out.status.success(), "{}", describe(&out));

    // A path (podman, CNI): that namespace.
    let name = format!("runm-test-{}", std::process::id());
    let added = Command::new("ip").args(["netns", "add", &name]).status();
    assert!(added.expect("ip netns add").success());
    let path = Path::new("/run/netns").join(&name);
    let ino = std::fs::metadata(&path).expect("the netns file").ino();
    let mut b = TestBundle::busybox(&tmp, "b2", &["sleep", "60"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network", "path": path}));
    });
    let pid = create(&runm, &tmp, &b, "c-path");
    assert_eq!(netns_of(&pid), format!("net:[{ino}]"));
    let out = runm.run(&["delete", "--force", "c-path"], T);
    assert!(out.status.success(), "{}", describe(&out));
    let _ = Command::new("ip").args(["netns", "delete", &name]).status();

    // None at all (`--network host`): refused before anything is made, naming the field.
    let mut b = TestBundle::busybox(&tmp, "b3", &["true"]);
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
    });
    let out = runm.run(&["run", "--bundle", b.path(), "c-host"], T);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`linux.namespaces`") && err.contains("network"),
        "{}",
        describe(&out)
    );

    assert_eq!(host_network(), before, "the host's network changed");
    runm.assert_empty();
    assert_no_runm_left();
}
