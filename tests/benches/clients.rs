//! `docker run --rm` and `podman run --rm` of a container printing one line, with runm
//! and with runc as the runtime, in the same environment; and, for the breakdown, the
//! bare `runm run` and `runc run` of the same command: the client's own share is the
//! difference.
//!
//! Output: medians over RUNS runs (milliseconds), the ratios runm/runc, and the split.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use runm_tests::bundle::TestBundle;
use runm_tests::clients::{Client, Dockerd, Podman, IMAGE};
use runm_tests::{median, runm_bin, TempDir};

const RUNS: usize = 10;
const LINE: &str = "hello from a container";

/// Runs `cmd` once; returns milliseconds, or exits the benchmark if the line is missing.
fn time(name: &str, mut cmd: Command) -> f64 {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("run the client");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    println!("run {name} {ms:.1}");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains(LINE) {
        eprintln!(
            "{name} failed ({}): {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        std::process::exit(1);
    }
    ms
}

fn main() {
    if !runm_tests::bench_should_run() {
        return;
    }
    let tmp = TempDir::new("bench-clients");
    let docker = Dockerd::start(&tmp);
    let podman = Podman::new(&tmp);
    let bundle = TestBundle::busybox(&tmp, "b", &["echo", LINE]);
    let runm = runm_bin();
    let runc = Path::new("/usr/sbin/runc");
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..RUNS {
        for runtime in ["runm", "runc"] {
            let docker_run = ["run", "--rm", "--runtime", runtime, IMAGE, "echo", LINE];
            let key = if runtime == "runm" {
                "docker_runm"
            } else {
                "docker_runc"
            };
            times
                .entry(key)
                .or_default()
                .push(time(key, docker.command(&docker_run)));

            let bin = if runtime == "runm" {
                runm.as_path()
            } else {
                runc
            };
            let podman_run = ["run", "--rm", "--network", "none", IMAGE, "echo", LINE];
            let key = if runtime == "runm" {
                "podman_runm"
            } else {
                "podman_runc"
            };
            let cmd = podman.command_with(bin, &podman_run);
            times.entry(key).or_default().push(time(key, cmd));

            let mut bare = Command::new(bin);
            let root = tmp.join(&format!("root-{runtime}"));
            bare.arg("--root")
                .arg(root)
                .arg("run")
                .arg("--bundle")
                .arg(&bundle.dir);
            bare.arg(format!("bench-{i}"));
            let key = if runtime == "runm" {
                "bare_runm"
            } else {
                "bare_runc"
            };
            times.entry(key).or_default().push(time(key, bare));
        }
    }
    let m: BTreeMap<&str, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    println!("# median of {RUNS} runs each, milliseconds, a container printing one line");
    for client in ["docker", "podman", "bare"] {
        let (runm, runc) = (m[&*format!("{client}_runm")], m[&*format!("{client}_runc")]);
        println!(
            "{client}_run_ms runm={runm:.1} runc={runc:.1} ratio={:.2}",
            runm / runc
        );
    }
    println!("# breakdown: the runtime's own `run`, and what the client adds around it");
    for client in ["docker", "podman"] {
        for runtime in ["runm", "runc"] {
            let total = m[&*format!("{client}_{runtime}")];
            let bare = m[&*format!("bare_{runtime}")];
            println!(
                "{client}_{runtime}_split runtime_run={bare:.1} client_overhead={:.1}",
                total - bare
            );
        }
    }
    podman.clean_up();
    docker.clean_up();
}
