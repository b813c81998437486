//! `runm run` of a container that prints one line, end to end, next to runc and crun
//! running the same bundle in the same environment (Debian's packages), and where
//! runm's time goes (its host process logs each phase with `--debug`).
//!
//! Output: medians over RUNS runs, then `oci_run_ms runm=.. runc=.. crun=..` with the
//! ratios, then runm's phases.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runm_tests::bundle::TestBundle;
use runm_tests::{median, runm_bin, TempDir};

const RUNS: usize = 10;

/// One `run` with `runtime`; returns milliseconds, and checks the container's line.
fn run_once(
    runtime: &str,
    extra: &[&str],
    root: &str,
    bundle: &str,
    id: &str,
) -> Result<f64, String> {
    let start = Instant::now();
    let out = Command::new(runtime)
        .args(["--root", root])
        .args(extra)
        .args(["run", "--bundle", bundle, id])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{runtime}: {e}"))?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("hello from a container") {
        return Err(format!(
            "{runtime} run failed ({}): {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(ms)
}

/// runm's phase timings from its debug log: lines `phase <name> <ms>`.
fn phases(log: &std::path::Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let msg = v["msg"].as_str().unwrap_or("");
        let mut words = msg.split_whitespace();
        if let (Some("phase"), Some(name), Some(ms)) = (words.next(), words.next(), words.next()) {
            if let Ok(ms) = ms.parse::<f64>() {
                out.insert(name.to_string(), ms);
            }
        }
    }
    out
}

fn main() {
    if !runm_tests::bench_should_run() {
        return;
    }
    let tmp = TempDir::new("bench-oci");
    let b = TestBundle::busybox(&tmp, "b", &["echo", "hello from a container"]);
    let root = tmp.join("root");
    let root = root.to_str().unwrap();
    let runm = runm_bin();
    let runm = runm.to_str().unwrap();
    let log = tmp.join("runm.log");
    let log_s = log.to_str().unwrap().to_string();
    let runm_extra = ["--debug", "--log", log_s.as_str(), "--log-format", "json"];
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut phase_runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..RUNS {
        let id = format!("bench-{i}");
        for (name, extra) in [
            ("runm", &runm_extra[..]),
            ("runc", &[][..]),
            ("crun", &[][..]),
        ] {
            let bin = if name == "runm" { runm } else { name };
            let _ = std::fs::remove_file(&log);
            match run_once(bin, extra, &format!("{root}-{name}"), b.path(), &id) {
                Ok(ms) => times.entry(name).or_default().push(ms),
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
            if name == "runm" {
                for (k, v) in phases(&log) {
                    phase_runs.entry(k).or_default().push(v);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let m: BTreeMap<&str, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    println!("# median of {RUNS} runs each, milliseconds, `run` of a container printing one line");
    println!(
        "oci_run_ms runm={:.1} runc={:.1} crun={:.1} ratio_runc={:.2} ratio_crun={:.2}",
        m["runm"],
        m["runc"],
        m["crun"],
        m["runm"] / m["runc"],
        m["runm"] / m["crun"]
    );
    println!("# runm phases (medians, ms; from its host process's debug log)");
    for (k, v) in phase_runs {
        println!("runm_phase_ms {k}={:.1}", median(v));
    }
}
