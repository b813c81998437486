//! Network throughput and latency of a container on Docker's default bridge, with runm
//! (its two data paths: the kernel's vhost-net, and the VMM's own device thread) and
//! with runc as the runtime, in the same run: `iperf3` TCP container → host and host →
//! container, `ping` round trip to the bridge, and HTTP connections per second from the
//! host to a server in the container.
//!
//! Output: one line per figure,
//! `net_<what> runm_vhost=.. runm_user=.. runc=.. ratio_vhost=.. ratio_user=..`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runm_tests::bundle::busybox_rootfs;
use runm_tests::clients::{Client, Dockerd};
use runm_tests::{median, runm_bin, TempDir};

const IMAGE: &str = "runm-bench-net:1";
const GATEWAY: &str = "172.17.0.1";
/// Seconds each iperf3 run lasts.
const IPERF_SECONDS: &str = "5";
const PINGS: &str = "20";
const HTTP_CONNECTIONS: usize = 200;

/// Copies `bin` and the shared libraries it loads (as ldd lists them) into `rootfs` at
/// the same paths.
fn copy_with_libs(bin: &str, rootfs: &Path) {
    let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = String::from_utf8_lossy(&ldd.stdout);
    let libs = text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(str::to_string);
    for file in std::iter::once(bin.to_string()).chain(libs) {
        let real = std::fs::canonicalize(&file).expect("resolve a library");
        let to = rootfs.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&real, &to).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
}

/// An image of busybox and iperf3.
fn import_image(tmp: &TempDir, docker: &Dockerd) {
    let rootfs = tmp.join("bench-rootfs");
    busybox_rootfs(&rootfs);
    copy_with_libs("/usr/bin/iperf3", &rootfs);
    let tar = tmp.join("bench-rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    docker.ok(&["import", tar.to_str().unwrap(), IMAGE]);
}

fn run(docker: &Dockerd, runtime: &str, opts: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(opts);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    docker.ok(&args)
}

/// iperf3 from the container (`docker run` options `opts`) to the host's server (or back
/// with `-R`); bits/s received.
fn iperf(docker: &Dockerd, runtime: &str, reverse: bool, opts: &[&str]) -> f64 {
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", GATEWAY])
        .stdout(Stdio::null())
        .spawn()
        .expect("iperf3 (apt-get install iperf3)");
    std::thread::sleep(Duration::from_millis(500));
    let mut cmd = vec!["iperf3", "-c", GATEWAY, "-t", IPERF_SECONDS, "-J"];
    if reverse {
        cmd.push("-R");
    }
    let out = run(docker, runtime, opts, &cmd);
    // Done with it whatever happened (a server whose client never came would wait on).
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J output");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("bits_per_second")
}

/// Average ping round trip from the container to the bridge, milliseconds.
fn ping(docker: &Dockerd, runtime: &str) -> f64 {
    let out = run(
        docker,
        runtime,
        &[],
        &["ping", "-c", PINGS, "-i", "0.2", GATEWAY],
    );
    let stats = out
        .lines()
        .find_map(|l| l.split_once("min/avg/max = "))
        .expect("ping's summary")
        .1;
    stats
        .split('/')
        .nth(1)
        .unwrap()
        .parse()
        .expect("the average")
}

/// HTTP/1.0 requests per second from the host to httpd in a detached container; None
/// (and why, on stderr) when a request fails.
fn http(docker: &Dockerd, runtime: &str) -> Option<f64> {
    let serve = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www";
    let name = format!("web-{runtime}");
    docker.ok(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        "--name",
        &name,
        IMAGE,
        "sh",
        "-c",
        serve,
    ]);
    let fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
    let ip = docker
        .ok(&["inspect", "--format", fmt, &name])
        .trim()
        .to_string();
    let addr: std::net::SocketAddr = format!("{ip}:80").parse().expect("the container's IP");
    let get = || -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while get().is_err() {
        assert!(Instant::now() < deadline, "httpd in {name} never answered");
        std::thread::sleep(Duration::from_millis(500));
    }
    let start = Instant::now();
    let failed = (0..HTTP_CONNECTIONS).find_map(|i| get().err().map(|e| (i, e)));
    let per_s = HTTP_CONNECTIONS as f64 / start.elapsed().as_secs_f64();
    docker.ok(&["rm", "--force", &name]);
    match failed {
        None => Some(per_s),
        Some((i, e)) => {
            eprintln!("HTTP request {i} to {name} ({ip}) failed: {e}");
            None
        }
    }
}

/// The runtimes compared: Docker's names for them.
const RUNTIMES: [&str; 3] = ["runm", "runm-user", "runc"];

/// One figure: each runtime's median, and how many of its runs failed.
fn line(what: &str, m: &[(f64, usize)]) {
    let failed: usize = m.iter().map(|(_, f)| f).sum();
    let note = if failed > 0 {
        format!(" failed_runs={}/{}/{}", m[0].1, m[1].1, m[2].1)
    } else {
        String::new()
    };
    println!(
        "{what} runm_vhost={:.2} runm_user={:.2} runc={:.2} ratio_vhost={:.2} ratio_user={:.2}{note}",
        m[0].0,
        m[1].0,
        m[2].0,
        m[0].0 / m[2].0,
        m[1].0 / m[2].0
    );
}

/// runm with the VMM's own data path, as Docker runtime `runm-user`.
fn userspace_runm(tmp: &TempDir) -> std::path::PathBuf {
    let path = tmp.join("runm-user");
    let script = format!(
        "#!/bin/sh\nRUNM_NET_BACKEND=userspace exec {} \"$@\"\n",
        runm_bin().display()
    );
    std::fs::write(&path, script).unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).unwrap();
    path
}

fn main() {
    if !runm_tests::bench_should_run() {
        return;
    }
    let tmp = TempDir::new("bench-net");
    let user = userspace_runm(&tmp);
    let docker = Dockerd::start_with_runtimes(&tmp, &[("runm-user", &user)]);
    import_image(&tmp, &docker);
    let each = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<(f64, usize)> {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); RUNTIMES.len()];
        let mut failed = vec![0; RUNTIMES.len()];
        for _ in 0..3 {
            for (i, rt) in RUNTIMES.iter().enumerate() {
                match f(rt) {
                    Some(v) => runs[i].push(v),
                    None => failed[i] += 1,
                }
            }
        }
        runs.into_iter()
            .map(|r| if r.is_empty() { f64::NAN } else { median(r) })
            .zip(failed)
            .collect()
    };
    // RUNM_BENCH_NET=tcp,ping,http (default: all) picks the figures.
    let only = std::env::var("RUNM_BENCH_NET").unwrap_or_default();
    let want = |what: &str| only.is_empty() || only.split(',').any(|w| w == what);
    println!("# median of 3 runs each; Docker's default bridge; iperf3 {IPERF_SECONDS} s");
    if want("tcp") {
        // As users run them (runm's VM has 1 vCPU), then with 2 CPUs for both (all the
        // test host has).
        for (tag, opts) in [("", &[][..]), ("_2cpus", &["--cpus", "2"][..])] {
            let up = each(&|rt| Some(iperf(&docker, rt, false, opts) / 1e6));
            line(&format!("net_tcp_container_to_host_mbit_s{tag}"), &up);
            let down = each(&|rt| Some(iperf(&docker, rt, true, opts) / 1e6));
            line(&format!("net_tcp_host_to_container_mbit_s{tag}"), &down);
        }
    }
    if want("ping") {
        line("net_ping_rtt_ms", &each(&|rt| Some(ping(&docker, rt))));
    }
    if want("http") {
        line("net_http_connections_per_s", &each(&|rt| http(&docker, rt)));
    }
    docker.clean_up();
}
