//! Containers' networks through the `runm` binary with real microVMs: state's pid lives
//! in the container's network namespace (a new one, or the one a path names), hooks run
//! in the host's, host networking is refused; a namespace configured by the CNI bridge
//! plugin reaches the guest both ways; and the host's own network never changes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::net::{host_network, http_get, in_netns, CniBridge, HttpServer, NamedNetns};
use runm_tests::*;

const T: Duration = Duration::from_secs(150);

/// `net:[inode]` of a process's network namespace.
fn netns_of(pid: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/net: {e}"))
        .to_string_lossy()
        .into_owned()
}

/// The pids of the processes whose network namespace is `netns` (`net:[inode]`).
fn processes_in_netns(netns: &str) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|l| l.to_string_lossy() == netns)
        })
        .collect()
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

/// The bundle's network namespace is the one at `path`.
fn join_netns(b: &mut TestBundle, path: &Path) {
    b.edit(|c| {
        let ns = c["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "network", "path": path}));
    });
}

#[test]
fn a_container_on_a_cni_bridge_reaches_the_host_and_the_host_reaches_it() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("network-cni");
    let runm = Runm::new(&tmp);
    let before = host_network();
    let ns = NamedNetns::new("runm-cni");
    let net = CniBridge::add(&tmp, &ns, "runm-cni0", "10.99.0");
    let mac = in_netns(&ns.name, &["cat", "/sys/class/net/eth0/address"]);
    let site = tmp.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello"), "hello from the host\n").unwrap();
    let _server = HttpServer::start(&site, &format!("{}:8123", net.gateway));

    // Out: the container sees the interface the plugin made, and reaches the host.
    let script = format!(
        "ip -o addr show dev eth0; cat /sys/class/net/eth0/address; ip route; \
         timeout 20 wget -q -O - http://{}:8123/hello",
        net.gateway
    );
    let mut b = TestBundle::busybox(&tmp, "out", &["sh", "-c", &script]);
    join_netns(&mut b, &ns.path());
    let out = runm.run(&["run", "--bundle", b.path(), "c-out"], T);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("inet {}/24", net.ip)), "{said}");
    assert!(
        said.contains(mac.trim()),
        "the guest has not the host interface's MAC: {said}"
    );
    assert!(
        said.contains(&format!("default via {}", net.gateway)),
        "{said}"
    );
    assert!(said.contains("hello from the host"), "{said}");

    // In: a server in the container answers the host at the container's address.
    let mut b = TestBundle::busybox(&tmp, "in", &["httpd", "-f", "-p", "80", "-h", "/www"]);
    std::fs::create_dir_all(b.dir.join("rootfs/www")).unwrap();
    std::fs::write(
        b.dir.join("rootfs/www/index.html"),
        "hello from the guest\n",
    )
    .unwrap();
    join_netns(&mut b, &ns.path());
    let pid = create(&runm, &tmp, &b, "c-in");
    let out = runm.run(&["start", "c-in"], T);
    assert!(out.status.success(), "{}", describe(&out));
    let got = http_get(&format!("http://{}/index.html", net.ip), 30);
    assert_eq!(got.as_deref(), Some("hello from the guest\n"));

    // The host process SIGKILLed while traffic flows: the container is stopped, and
    // `delete` removes what the host process could not.
    let traffic = std::thread::spawn({
        let url = format!("http://{}/index.html", net.ip);
        move || (0..20).for_each(|_| drop(http_get(&url, 1)))
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(send_signal(pid.parse().unwrap(), "KILL").unwrap().success());
    assert_eq!(
        runm.wait_status("c-in", "stopped", Duration::from_secs(30)),
        "stopped"
    );
    let _ = traffic.join();
    let out = runm.run(&["delete", "c-in"], T);
    assert!(out.status.success(), "{}", describe(&out));

    // Nothing of runm's is left in the namespace: no tap, no redirect on eth0.
    let links = in_netns(&ns.name, &["ip", "-o", "link"]);
    assert!(!links.contains("runm"), "{links}");
    let qdiscs = in_netns(&ns.name, &["tc", "qdisc", "show", "dev", "eth0"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    drop(net);
    drop(ns);
    assert_eq!(host_network(), before, "the host's network changed");
    runm.assert_empty();
    assert_no_runm_left();
}

#[test]
fn a_namespace_without_interfaces_gives_the_container_loopback_only() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("network-none");
    let runm = Runm::new(&tmp);
    let script = "ip -o link | cut -d: -f2; ip -o link show lo | grep -q ',UP' && echo lo-ok";
    let b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    let out = runm.run(&["run", "--bundle", b.path(), "c-none"], T);
    assert!(out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    let links: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| *l != "lo-ok")
        .collect();
    assert_eq!(links, ["lo"], "{said}");
    assert!(said.contains("lo-ok"), "{said}");
    runm.assert_empty();
    assert_no_runm_left();
}

/// `ip ARGS`, asserting it succeeded.
fn ip(args: &[&str]) {
    let mut c = Command::new("ip");
    c.args(args);
    let out = run_command(c, T, None);
    assert!(out.status.success(), "ip {args:?}: {}", describe(&out));
}

#[test]
fn an_interface_that_appears_after_start_reaches_the_guest() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("network-late");
    let runm = Runm::new(&tmp);
    let before = host_network();
    let site = tmp.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello"), "hello from the host\n").unwrap();

    // Docker 28's order: the container is created and started in a new namespace, and
    // only then gets a veth, named, addressed and routed through /proc/PID/ns/net.
    let script = "i=0; until ip -o addr show dev eth0 2>/dev/null | grep -q 'inet 10.98.0.2/24'; \
                  do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.1; done; \
                  ip -o addr show dev eth0; ip route; \
                  timeout 20 wget -q -O - http://10.98.0.1:8126/hello";
    let b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    let created = runm.run_detached(&tmp, "late", &["create", "--bundle", b.path(), "c-late"], T);
    assert!(created.status.success(), "create: {created:?}");
    let pid = runm.state("c-late").expect("state")["pid"].to_string();
    let own = netns_of(&pid);
    let out = runm.run(&["start", "c-late"], T);
    assert!(out.status.success(), "{}", describe(&out));

    ip(&[
        "link",
        "add",
        "runm-late0",
        "type",
        "veth",
        "peer",
        "name",
        "runm-late1",
    ]);
    ip(&["link", "set", "runm-late1", "netns", &pid]);
    ip(&["addr", "add", "10.98.0.1/24", "dev", "runm-late0"]);
    ip(&["link", "set", "runm-late0", "up"]);
    let _server = HttpServer::start(&site, "10.98.0.1:8126");
    let netns = format!("--net=/proc/{pid}/ns/net");
    for args in [
        &["link", "set", "runm-late1", "name", "eth0"][..],
        &["addr", "add", "10.98.0.2/24", "dev", "eth0"],
        &["link", "set", "eth0", "up"],
        &["route", "add", "default", "via", "10.98.0.1"],
    ] {
        let mut c = Command::new("nsenter");
        c.arg(&netns).arg("ip").args(args);
        let out = run_command(c, T, None);
        assert!(out.status.success(), "ip {args:?}: {}", describe(&out));
    }

    assert_eq!(
        runm.wait_status("c-late", "stopped", Duration::from_secs(120)),
        "stopped"
    );
    let said = std::fs::read_to_string(tmp.join("late.out")).unwrap();
    assert!(said.contains("inet 10.98.0.2/24"), "{said}");
    assert!(said.contains("default via 10.98.0.1"), "{said}");
    assert!(said.contains("hello from the host"), "{said}");
    let out = runm.run(&["delete", "c-late"], T);
    assert!(out.status.success(), "{}", describe(&out));
    // The container's namespace went with its host process: no process is left in it,
    // and the kernel then frees it, and the veth with it, on a work queue of its own
    // (not before `delete` returns, and slowly under emulation).
    let left = processes_in_netns(&own);
    assert!(left.is_empty(), "processes left in {own}: {left:?}");
    let veth_gone = || {
        let shown = Command::new("ip")
            .args(["link", "show", "runm-late0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        !shown.expect("ip").success()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !veth_gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(veth_gone(), "the veth outlived the container's namespace");
    assert_eq!(host_network(), before, "the host's network changed");
    runm.assert_empty();
    assert_no_runm_left();
}
