//! Boot benchmark: time from VMM start to the agent's banner, and from the banner to the
//! VMM's exit, for runm and for QEMU `-M microvm` booting the same kernel and initramfs
//! with the same command line, in the same environment. Prints medians and ratios.
//!
//! `make bench` runs it (inside the emulated KVM test host where needed). Absolute
//! figures there are those of an emulated machine: compare the ratio.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runm_tests::{kvm_unusable_reason, runm_bin, target_profile_dir, BANNER_PREFIX};

/// Same parameters for both VMMs: runm's defaults, written out for QEMU.
const CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule quiet";
const MEM_MIB: &str = "128";

struct Sample {
    to_banner: Duration,
    banner_to_exit: Duration,
}

/// Runs `cmd`, timing the first banner line on its stdout and its exit.
fn measure(cmd: &mut Command) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut banner = None;
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("read: {e}"))?;
        if banner.is_none() && line.contains(BANNER_PREFIX) {
            banner = Some(start.elapsed());
        }
        seen.push(line);
    }
    let status = child.wait().map_err(|e| format!("wait: {e}"))?;
    let end = start.elapsed();
    let banner =
        banner.ok_or_else(|| format!("no banner ({status}); output:\n{}", seen.join("\n")))?;
    Ok(Sample {
        to_banner: banner,
        banner_to_exit: end - banner,
    })
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    m.as_secs_f64() * 1000.0
}

fn runm_cmd() -> Command {
    let mut c = Command::new(runm_bin());
    c.args(["boot", "--memory", MEM_MIB]);
    c
}

fn qemu_cmd(kernel: &Path, initrd: &Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,isa-serial=on",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        "1",
        "-m",
        MEM_MIB,
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        // microvm has no keyboard controller; the guest's `reboot=k` needs one to end
        // the VM promptly, as runm's VMM provides.
        "-device",
        "i8042",
        "-kernel",
    ]);
    c.arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE]);
    c
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    if let Some(why) = kvm_unusable_reason() {
        eprintln!("boot benchmark needs KVM that can run Linux, but {why}; run `make bench`");
        std::process::exit(1);
    }
    let boots: usize = std::env::var("RUNM_BENCH_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let guest = target_profile_dir().join("../guest");
    let (kernel, initrd) = (guest.join("vmlinux"), guest.join("initramfs.cpio"));

    let mut runs: [(&str, Vec<Sample>); 2] = [("runm", Vec::new()), ("qemu", Vec::new())];
    // Interleave the two so that drift in the machine's speed hits both alike.
    for i in 0..boots {
        for (name, samples) in runs.iter_mut() {
            let mut cmd = if *name == "runm" {
                runm_cmd()
            } else {
                qemu_cmd(&kernel, &initrd)
            };
            match measure(&mut cmd) {
                Ok(s) => {
                    eprintln!(
                        "boot {i} {name}: banner {:.1} ms, exit {:.1} ms later",
                        s.to_banner.as_secs_f64() * 1e3,
                        s.banner_to_exit.as_secs_f64() * 1e3
                    );
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("{name} boot {i} failed: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
    let [(_, runm), (_, qemu)] = runs;
    let row = |label: &str, f: fn(&Sample) -> Duration| {
        let r = median(runm.iter().map(f).collect());
        let q = median(qemu.iter().map(f).collect());
        println!("{label} runm={r:.1} qemu={q:.1} ratio={:.2}", r / q);
    };
    println!("# medians over {boots} boots each, milliseconds; ratio = runm/qemu");
    row("start_to_banner_ms", |s| s.to_banner);
    row("banner_to_exit_ms", |s| s.banner_to_exit);
}
