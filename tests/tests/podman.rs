//! podman drives runm unchanged (`podman --runtime runm`): run with its usual options,
//! a terminal, volumes and limits, detached containers with exec, logs, stop and kill;
//! its default network and `-p`.
//! Every container runs in a real microVM (its kernel is not the host's).

use std::process::Output;
use std::time::Duration;

use runm_tests::clients::{host_kernel_release, run_with_a_terminal, Client, Podman, IMAGE};
use runm_tests::net::{http_get, HttpServer};
use runm_tests::*;

/// One podman command: a microVM boot in the emulated test host, and podman's own work.
const T: Duration = Duration::from_secs(180);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `podman run --rm --network none [OPTS] IMAGE CMD...` (networks have a test of their own).
fn run(podman: &Podman, opts: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["run", "--rm", "--network", "none"];
    args.extend_from_slice(opts);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    podman.run(&args, T)
}

/// `podman run -d --network none --name NAME IMAGE CMD...`, then asserts podman lists it
/// as up.
fn run_detached(podman: &Podman, name: &str, cmd: &[&str]) {
    let mut args = vec!["run", "-d", "--network", "none", "--name", name, IMAGE];
    args.extend_from_slice(cmd);
    podman.ok(&args);
    let ps = podman.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    let up = format!("{name} Up");
    assert!(ps.lines().any(|l| l.starts_with(&up)), "{ps}");
}

/// Every container, image, runm and virtiofsd gone, no mount left in podman's storage.
fn assert_clean(podman: &Podman) {
    podman.clean_up();
    assert_no_runm_left();
    assert_eq!(
        mounts_under(podman.dir()),
        Vec::<String>::new(),
        "mounts left"
    );
}

#[test]
fn run_returns_output_and_exit_codes_and_applies_env_workdir_and_user() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("podman-run");
    let podman = Podman::new(&tmp);

    let out = run(&podman, &[], &["uname", "-r"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let guest_kernel = text(&out.stdout).trim().to_string();
    assert!(!guest_kernel.is_empty(), "{}", describe(&out));
    assert_ne!(
        guest_kernel,
        host_kernel_release(),
        "the container ran on the host's kernel"
    );

    let out = run(&podman, &[], &["sh", "-c", "echo to-stderr >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("to-stderr"),
        "{}",
        describe(&out)
    );

    let opts = ["-e", "FOO=bar", "-w", "/tmp", "-u", "1000:1000"];
    let out = run(
        &podman,
        &opts,
        &["sh", "-c", "echo $FOO $(pwd) $(id -u):$(id -g)"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), "bar /tmp 1000:1000");

    // As with runc: the runtime's error, and 127 for a command that does not exist.
    let out = run(&podman, &[], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("no-such-command"),
        "{}",
        describe(&out)
    );
    assert_clean(&podman);
}

#[test]
fn volumes_read_only_rootfs_and_memory_limits_apply() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("podman-vol");
    let podman = Podman::new(&tmp);
    let vol = tmp.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), "from-host\n").unwrap();

    let v = format!("{}:/vol", vol.display());
    let out = run(
        &podman,
        &["-v", &v],
        &["sh", "-c", "cat /vol/in; echo from-guest > /vol/out"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "from-host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from-guest\n"
    );

    // podman mounts /tmp with tmpcopyup on a read-only rootfs.
    let script = "echo x > /f 2>/dev/null && echo WRITABLE || echo refused; \
                  echo x > /tmp/f && echo tmp-writable";
    let out = run(&podman, &["--read-only"], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "refused\ntmp-writable\n");

    let out = run(
        &podman,
        &["--memory", "64m"],
        &["cat", "/sys/fs/cgroup/memory.max"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout).trim(), (64 << 20).to_string());
    assert_clean(&podman);
}

#[test]
fn a_terminal_and_interactive_input_reach_the_container() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("podman-tty");
    let podman = Podman::new(&tmp);

    let out = run(
        &podman,
        &["-t"],
        &["sh", "-c", "[ -t 0 ] && [ -t 1 ] && tty"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("/dev/pts/"),
        "{}",
        describe(&out)
    );

    // -it needs podman's own stdin to be a terminal.
    let cmd = podman.command(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-it",
        IMAGE,
        "sh",
        "-c",
        "read line; echo got-$line; [ -t 0 ] && echo stdin-is-a-tty",
    ]);
    let out = run_with_a_terminal(&cmd, b"hello\n", T);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let said = text(&out.stdout);
    assert!(said.contains("got-hello"), "{}", describe(&out));
    assert!(said.contains("stdin-is-a-tty"), "{}", describe(&out));
    assert_clean(&podman);
}

#[test]
fn detached_containers_take_exec_logs_ps_stop_and_kill() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("podman-detached");
    let podman = Podman::new(&tmp);
    let script = "echo started; trap 'echo got-term; exit 3' TERM; \
                  while true; do sleep 0.2; done";
    // One microVM at a time: two nested VMs at once crash the emulated test host's kernel
    // (see tests/testhost/README.md), so c2 starts after c1 has stopped.
    run_detached(&podman, "c1", &["sh", "-c", script]);

    let out = podman.run(&["exec", "c1", "sh", "-c", "echo exec-out; exit 5"], T);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "exec-out\n");

    // The container's own trap answers podman stop's SIGTERM.
    podman.ok(&["stop", "--time", "30", "c1"]);
    let state = podman.ok(&[
        "inspect",
        "c1",
        "--format",
        "{{.State.Status}} {{.State.ExitCode}}",
    ]);
    assert_eq!(state.trim(), "exited 3");
    let logs = podman.ok(&["logs", "c1"]);
    assert_eq!(logs, "started\ngot-term\n");

    run_detached(&podman, "c2", &["sleep", "1000"]);
    podman.ok(&["kill", "c2"]);
    let code = podman.ok(&["wait", "c2"]);
    assert_eq!(code.trim(), "137");
    let ps = podman.ok(&["ps", "--all", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.lines().any(|l| l.starts_with("c2 Exited (137)")), "{ps}");
    assert_clean(&podman);
}

#[test]
fn the_default_network_reaches_the_host_and_publishes_ports() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("podman-net");
    let podman = Podman::new(&tmp);

    // podman's default network (CNI bridge cni-podman0, 10.88.0.0/16).
    let out = podman.run(
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "ip -o addr show dev eth0; ip route",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let said = text(&out.stdout);
    assert!(said.contains("inet 10.88."), "{said}");
    assert!(said.contains("default via 10.88.0.1"), "{said}");

    let site = tmp.join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello"), "hello from the host\n").unwrap();
    let _server = HttpServer::start(&site, "10.88.0.1:8125");
    let get = "timeout 20 wget -q -O - http://10.88.0.1:8125/hello";
    let out = podman.run(&["run", "--rm", IMAGE, "sh", "-c", get], T);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(text(&out.stdout), "hello from the host\n");

    let serve = "mkdir -p /www && echo hello from the guest > /www/index.html && \
                 exec httpd -f -p 80 -h /www";
    podman.ok(&[
        "run", "-d", "--name", "web", "-p", "8081:80", IMAGE, "sh", "-c", serve,
    ]);
    let got = http_get("http://10.88.0.1:8081/index.html", 30);
    assert_eq!(got.as_deref(), Some("hello from the guest\n"));
    assert_clean(&podman);
}
