//! Container filesystem performance, in one run and one environment: the same workload
//! (`fsbench`, from tests/guest: 128 MiB sequential write with fsync, 128 MiB sequential
//! read of a file the guest has not cached, create/stat/delete 10,000 empty files, untar
//! a Debian /usr/share tree) run
//! - directly on the host (the test host, when KVM needs one);
//! - in a runm container whose rootfs is an ext4 image on virtio-blk;
//! - in runm containers on virtio-fs, once per cache mode.
//!
//! All storage sits in the same host directory (the system temp dir), so only the path
//! to it differs. Output: the median of RUNS runs per measure and setup, then each
//! virtio-fs setup's ratio against the block image and against the host (time ratios:
//! above 1 is slower; throughput is turned into time per MiB first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runm_tests::bundle::TestBundle;
use runm_tests::{median, runm_bin, target_profile_dir, TempDir};

/// Runs per setup (`FSBENCH_RUNS` overrides), and the setups to run (`FSBENCH_SETUPS`,
/// comma-separated names as printed; all by default).
const RUNS: usize = 3;
const BIG_MIB: usize = 128;
/// Measures, and whether a bigger value is better (throughput) or worse (time).
const MEASURES: &[(&str, bool)] = &[
    ("seq_write_mib_s", true),
    ("seq_read_mib_s", true),
    ("create_10k_ms", false),
    ("stat_10k_ms", false),
    ("delete_10k_ms", false),
    ("untar_ms", false),
];
const CACHE_MODES: &[&str] = &["auto", "always", "never"];

type Figures = BTreeMap<String, f64>;

fn parse(text: &str) -> Figures {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("fsbench"), Some(k), Some(v)) => Some((k.to_string(), v.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// The run's figures, printed at once (a later failure must not lose them); a failed
/// run is reported and its partial figures dropped.
fn check(what: &str, out: std::process::Output) -> Option<Figures> {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let figures = parse(&text);
    if !out.status.success() || figures.len() != MEASURES.len() {
        println!(
            "# {what} FAILED ({}): {}\n# {}",
            out.status,
            text.trim().replace('\n', "; "),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
        return None;
    }
    println!("# {what}: {}", text.trim().replace('\n', "; "));
    Some(figures)
}

/// A busybox bundle with `fsbench` and the inputs in its rootfs.
fn bundle(tmp: &TempDir, name: &str, fsbench: &Path, input: &Path) -> TestBundle {
    let b = TestBundle::busybox(tmp, name, &["/fsbench", "/work", "/input"]);
    let root = b.dir.join("rootfs");
    std::fs::copy(fsbench, root.join("fsbench")).expect("copy fsbench");
    std::fs::create_dir_all(root.join("input")).unwrap();
    for f in ["big.bin", "tree.tar"] {
        std::fs::copy(input.join(f), root.join("input").join(f)).expect("copy input");
    }
    b
}

fn run_container(b: &TestBundle, state: &Path, id: &str) -> Option<Figures> {
    let out = Command::new(runm_bin())
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle", b.path(), id])
        .stdin(Stdio::null())
        .output()
        .expect("runm");
    check(&format!("runm run {id}"), out)
}

fn main() {
    if !runm_tests::bench_should_run() {
        return;
    }
    let fsbench = target_profile_dir().join("../x86_64-unknown-linux-gnu/release/fsbench");
    let debian = target_profile_dir().join("../debian-rootfs/usr/share");
    for p in [&fsbench, &debian] {
        assert!(p.exists(), "{} is missing: run `make bench`", p.display());
    }
    let tmp = TempDir::new("bench-fs");
    let input = tmp.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let big: Vec<u8> = (0..BIG_MIB << 20)
        .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
        .collect();
    std::fs::write(input.join("big.bin"), big).unwrap();
    let tar = Command::new("tar")
        .arg("-cf")
        .arg(input.join("tree.tar"))
        .arg("-C")
        .arg(debian.parent().unwrap())
        .arg("share")
        .status()
        .unwrap();
    assert!(tar.success(), "tar of {}", debian.display());
    let state = tmp.join("state");

    // Block: an ext4 image of the same rootfs, with room for the workload.
    let blk = bundle(&tmp, "blk", &fsbench, &input);
    let image: PathBuf = tmp.join("root.img");
    runm_tests::make_ext4_image(&blk.dir.join("rootfs"), &image, "1G");
    let mut blk = blk;
    blk.edit(|c| c["annotations"] = serde_json::json!({"io.runm.rootfs.block": image}));

    let mut setups: Vec<(String, TestBundle)> = vec![("virtio_blk_ext4".into(), blk)];
    for mode in CACHE_MODES {
        let mut b = bundle(&tmp, &format!("fs-{mode}"), &fsbench, &input);
        b.edit(|c| c["annotations"] = serde_json::json!({"io.runm.virtiofs.cache": mode}));
        setups.push((format!("virtiofs_{mode}"), b));
    }

    let runs_wanted = std::env::var("FSBENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let wanted = std::env::var("FSBENCH_SETUPS").ok();
    let wanted = |name: &str| {
        wanted
            .as_deref()
            .is_none_or(|w| w.split(',').any(|s| s == name))
    };
    setups.retain(|(name, _)| wanted(name));
    let mut runs: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for i in 0..runs_wanted {
        let host_work = tmp.join("host-work");
        let out = Command::new(&fsbench)
            .arg(&host_work)
            .arg(&input)
            .output()
            .expect("fsbench");
        let _ = std::fs::remove_dir_all(&host_work);
        for (k, v) in check("fsbench on the host", out).unwrap_or_default() {
            runs.entry("host".into())
                .or_default()
                .entry(k)
                .or_default()
                .push(v);
        }
        for (name, b) in &setups {
            let figures = run_container(b, &state, &format!("{name}-{i}"));
            for (k, v) in figures.unwrap_or_default() {
                runs.entry(name.clone())
                    .or_default()
                    .entry(k)
                    .or_default()
                    .push(v);
            }
        }
    }
    let m: BTreeMap<String, Figures> = runs
        .into_iter()
        .map(|(s, f)| (s, f.into_iter().map(|(k, v)| (k, median(v))).collect()))
        .collect();
    println!("# fsbench, median of {runs_wanted} runs; MiB/s or ms as named");
    for (setup, figures) in &m {
        let line: Vec<String> = MEASURES
            .iter()
            .map(|(k, _)| format!("{k}={:.1}", figures[*k]))
            .collect();
        println!("fs {setup} {}", line.join(" "));
    }
    println!("# time ratios (above 1: slower), against the virtio-blk image and the host");
    for mode in CACHE_MODES {
        let Some(fs) = m.get(&format!("virtiofs_{mode}")) else {
            continue;
        };
        for (base_name, base) in [("blk", m.get("virtio_blk_ext4")), ("host", m.get("host"))] {
            let Some(base) = base else { continue };
            let line: Vec<String> = MEASURES
                .iter()
                .map(|(k, higher_better)| {
                    let r = if *higher_better {
                        base[*k] / fs[*k]
                    } else {
                        fs[*k] / base[*k]
                    };
                    format!("{k}={r:.2}")
                })
                .collect();
            println!("fs_ratio virtiofs_{mode}/{base_name} {}", line.join(" "));
        }
    }
}
