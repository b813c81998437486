//! Docker drives runm unchanged (`dockerd --add-runtime runm=...`,
//! `docker run --runtime runm`): output and exit codes, -e, -v, a terminal, exec and
//! stop, a missing command's 127, and Docker's default capabilities and seccomp profile
//! applied in the guest exactly as runc applies them on the host; Docker's bridge
//! networks (the default one, `-p`, and names resolved on a user-defined one). Every
//! container runs in a real microVM (its kernel is not the host's).

use std::process::Output;
use std::time::Duration;

use runm_tests::clients::{host_kernel_release, run_with_a_terminal, Client, Dockerd, IMAGE};
use runm_tests::net::{http_get, HttpServer};
use runm_tests::*;

/// One docker command: a microVM boot in the emulated test host, and Docker's own work.
const T: Duration = Duration::from_secs(180);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `docker run --rm --runtime RUNTIME [OPTS] IMAGE CMD...`.
fn run(docker: &Dockerd, runtime: &str, opts: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(opts);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    docker.run(&args, T)
}

/// Every container and image gone, and no runm, virtiofsd, shim or mount left behind.
fn assert_clean(docker: &Dockerd) {
    docker.clean_up();
    assert_no_runm_left();
    assert_eq!(
        mounts_under(&docker.dir().join("exec")),
        Vec::<String>::new()
    );
}

#[test]
fn docker_run_applies_options_and_its_default_confinement_in_the_guest() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("docker-run");
    let docker = Dockerd::start(&tmp);
    let vol = tmp.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from-host\n").unwrap();

    let v = format!("{}:/vol", vol.display());
    let script = "echo $A; cat /vol/in; echo from-guest > /vol/out; uname -r; exit 3";
    let out = run(
        &docker,
        "runm",
        &["-e", "A=b", "-v", &v],
        &["sh", "-c", script],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let said = text(&out.stdout);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["b", "from-host"], "{said}");
    assert_ne!(
        lines.get(2).copied(),
        Some(host_kernel_release().as_str()),
        "{said}"
    );
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from-guest\n"
    );

    // Docker's default capability set (CAP_CHOWN, DAC_OVERRIDE, FSETID, FOWNER, MKNOD,
    // NET_RAW, SETGID, SETUID, SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL,
    // AUDIT_WRITE) and its seccomp profile, applied in the guest: what runc's containers
    // show under the same dockerd.
    let script = "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status";
    let out = run(&docker, "runm", &[], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        text(&out.stdout),
        "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\nSeccomp:\t2\n"
    );

    // As with runc: the runtime's error, and 127.
    let out = run(&docker, "runm", &[], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("\"no-such-command\": executable file not found in $PATH"),
        "{}",
        describe(&out)
    );
    assert_clean(&docker);
}

#[test]
fn docker_terminals_exec_and_stop_work() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("docker-tty");
    let docker = Dockerd::start(&tmp);

    let out = run(&docker, "runm", &["-t"], &["sh", "-c", "[ -t 1 ] && tty"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}",
        describe(&out)
    );

    // -it needs the CLI's own stdin to be a terminal.
    let script = "read line; echo got-$line; [ -t 0 ] && echo stdin-is-a-tty";
    let cmd = docker.command(&[
        "run",
        "--rm",
        "--runtime",
        "runm",
        "-it",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    let out = run_with_a_terminal(&cmd, b"hello\n", T);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("got-hello"),
        "{}",
        describe(&out)
    );
    assert!(
        text(&out.stdout).contains("stdin-is-a-tty"),
        "{}",
        describe(&out)
    );

    let script = "trap 'exit 5' TERM; while true; do sleep 0.2; done";
    let runm = ["run", "--detach", "--runtime", "runm", "--name", "c1"];
    docker.ok(&[&runm[..], &[IMAGE, "sh", "-c", script]].concat());
    let out = docker.run(&["exec", "c1", "sh", "-c", "echo exec-out; exit 4"], T);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "exec-out\n");
    docker.ok(&["stop", "--time", "30", "c1"]);
    let code = docker.ok(&["inspect", "c1", "--format", "{{.State.ExitCode}}"]);
    assert_eq!(
        code.trim(),
        "5",
        "the container's own trap answers docker stop"
    );
    assert_clean(&docker);
}

#[test]
fn docker_bridge_networks_reach_the_host_publish_ports_and_resolve_names() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("docker-net");
    let docker = Dockerd::start(&tmp);
    let site = tmp.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello"), "hello from the host\n").unwrap();
    // docker0's address, where a container on the default bridge finds its host.
    let _server = HttpServer::start(&site, "172.17.0.1:8124");

    // The default bridge: eth0 as runc would show it, and the host reached through it.
    let script = "ip -o addr show dev eth0; ip route; \
                  timeout 20 wget -q -O - http://172.17.0.1:8124/hello";
    let out = run(&docker, "runm", &[], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let said = text(&out.stdout);
    assert!(said.contains("inet 172.17."), "{said}");
    assert!(said.contains("default via 172.17.0.1"), "{said}");
    assert!(said.contains("hello from the host"), "{said}");

    // -p: a server in the guest, published on the host.
    let serve = "mkdir -p /www && echo hello from the guest > /www/index.html && \
                 exec httpd -f -p 80 -h /www";
    let detached = ["run", "--detach", "--runtime", "runm"];
    docker.ok(&[
        &detached[..],
        &["--name", "web", "-p", "8080:80", IMAGE, "sh", "-c", serve],
    ]
    .concat());
    let got = http_get("http://127.0.0.1:8080/index.html", 30);
    assert_eq!(got.as_deref(), Some("hello from the guest\n"));

    // A user-defined network: containers reach each other by name, through Docker's
    // embedded DNS (127.0.0.11 in the container's namespace, bridged from the guest).
    docker.ok(&["network", "create", "runm-net"]);
    let named = ["--name", "srv", "--network", "runm-net"];
    docker.ok(&[&detached[..], &named[..], &[IMAGE, "sh", "-c", serve]].concat());
    let fetch = "for i in 1 2 3 4 5 6 7 8 9 10; do \
                 timeout 10 wget -q -O - http://srv/index.html && exit 0; sleep 1; done; \
                 cat /etc/resolv.conf; nslookup srv; exit 1";
    let out = run(
        &docker,
        "runm",
        &["--network", "runm-net"],
        &["sh", "-c", fetch],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "hello from the guest\n");

    docker.ok(&["rm", "--force", "web", "srv"]);
    docker.ok(&["network", "rm", "runm-net"]);
    assert_clean(&docker);
}
