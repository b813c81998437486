//! Boot benchmark, runm against QEMU `-M microvm` booting the same kernel and initramfs
//! with the same command line in the same environment:
//! - time from VMM start to the agent's banner on the console, and from there to exit;
//! - time from VMM start until the host has connected over vsock and the agent answered
//!   a ping (QEMU gets a vhost-vsock device for that);
//! - host memory of an idle VM with 128 MiB of guest RAM, with and without the guest's
//!   memory (the VMM's own overhead).
//!
//! `make bench` runs it (inside the emulated KVM test host where needed). Absolute
//! figures there are those of an emulated machine: compare the ratios. The last two
//! lines are `boot_to_agent_ms runm=.. qemu=.. ratio=..` and `vmm_overhead_kib N`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use runm_protocol::{read_frame, write_frame, Request, Response, AGENT_PORT};
use runm_tests::{kvm_unusable_reason, runm_bin, target_profile_dir, TempDir, BANNER_PREFIX};
use vsock::VsockStream;

/// Same parameters for both VMMs: runm's defaults, written out for QEMU.
const CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule quiet";
const MEM_MIB: &str = "128";

/// One boot: when the agent's banner appeared on the console, when the agent answered a
/// ping over vsock, and when the VMM exited (after the agent was asked to power off),
/// all from the VMM's start.
struct Sample {
    banner: Duration,
    agent: Duration,
    exit: Duration,
}

/// Reads `stdout` to its end in a thread; returns when the banner line (containing
/// `BANNER_PREFIX`) and the first line starting with `marker`, if any, arrived.
fn watch_stdout(
    stdout: std::process::ChildStdout,
    start: Instant,
    marker: Option<&'static str>,
) -> std::thread::JoinHandle<(Option<Duration>, Option<Duration>, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut banner, mut mark, mut seen) = (None, None, Vec::new());
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if banner.is_none() && line.contains(BANNER_PREFIX) {
                banner = Some(start.elapsed());
            }
            if mark.is_none() && marker.is_some_and(|m| line.starts_with(m)) {
                mark = Some(start.elapsed());
            }
            seen.push(line);
        }
        (banner, mark, seen)
    })
}

/// `runm boot` pings the agent itself (printing `agent ready: ...`) and powers it off.
fn measure_runm() -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = runm_cmd()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn runm: {e}"))?;
    let watcher = watch_stdout(
        child.stdout.take().ok_or("no stdout")?,
        start,
        Some("agent ready: "),
    );
    let status = child.wait().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    let (banner, agent, seen) = watcher.join().map_err(|_| "stdout reader panicked")?;
    match (banner, agent, status.success()) {
        (Some(banner), Some(agent), true) => Ok(Sample {
            banner,
            agent,
            exit,
        }),
        _ => Err(format!("runm boot failed ({status}):\n{}", seen.join("\n"))),
    }
}

/// QEMU with a vhost-vsock device: this process pings the agent and powers it off, as
/// `runm boot` does.
fn measure_qemu(kernel: &Path, initrd: &Path, cid: u32) -> Result<Sample, String> {
    let start = Instant::now();
    let mut child = qemu_cmd(kernel, initrd)
        .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn qemu: {e}"))?;
    let watcher = watch_stdout(child.stdout.take().ok_or("no stdout")?, start, None);
    let deadline = start + Duration::from_secs(300);
    let agent = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("qemu exited early: {status}"));
        }
        if Instant::now() > deadline {
            break Err("the agent in QEMU never answered".to_string());
        }
        if let Ok(mut s) = VsockStream::connect_with_cid_port(cid, AGENT_PORT) {
            let pong = write_frame(&mut s, &Request::Ping)
                .and_then(|()| read_frame::<_, Response>(&mut s));
            if let Ok(Response::Pong(_)) = pong {
                let t = start.elapsed();
                let _ = write_frame(&mut s, &Request::Shutdown)
                    .and_then(|()| read_frame::<_, Response>(&mut s));
                break Ok(t);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    finish(&mut child, Duration::from_secs(60));
    let exit = start.elapsed();
    let (banner, _, seen) = watcher.join().map_err(|_| "stdout reader panicked")?;
    let agent = agent.map_err(|e| format!("{e}; console:\n{}", seen.join("\n")))?;
    let banner = banner.ok_or_else(|| format!("no banner; console:\n{}", seen.join("\n")))?;
    Ok(Sample {
        banner,
        agent,
        exit,
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
        // No ACPI in our guest kernel: with microvm's default second IOAPIC (described
        // only by ACPI) the guest would never get its virtio interrupts.
        "microvm,x-option-roms=off,rtc=off,isa-serial=on,ioapic2=off,acpi=off",
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

/// Waits for `child` to exit, killing it after `grace`.
fn finish(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// (total RSS, RSS of the guest RAM mapping) of `pid` in KiB. Guest RAM is the largest
/// mapping of at least `guest_kib`.
fn rss_kib(pid: u32, guest_kib: u64) -> Result<(u64, u64), String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("read smaps of {pid}: {e}"))?;
    let (mut total, mut guest, mut guest_size) = (0, 0, 0);
    let mut size = 0;
    for line in smaps.lines() {
        let field = |name: &str| -> Option<u64> {
            line.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        };
        if let Some(s) = field("Size:") {
            size = s;
        } else if let Some(r) = field("Rss:") {
            total += r;
            if size >= guest_kib && size > guest_size {
                guest_size = size;
                guest = r;
            }
        }
    }
    Ok((total, guest))
}

/// Memory of an idle VM: boots it, waits for the banner and for things to settle,
/// measures, then kills it.
fn idle_rss(mut cmd: Command) -> Result<(u64, u64), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines.any(|l| l.is_ok_and(|l| l.contains(BANNER_PREFIX)));
    std::thread::sleep(Duration::from_secs(2));
    let guest_kib = MEM_MIB.parse::<u64>().unwrap_or(128) * 1024;
    let rss = rss_kib(child.id(), guest_kib);
    let _ = child.kill();
    let _ = child.wait();
    if !banner {
        return Err("the idle VM never printed the agent banner".into());
    }
    rss
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
            let result = if *name == "runm" {
                measure_runm()
            } else {
                measure_qemu(&kernel, &initrd, 100 + u32::try_from(i).unwrap_or(0))
            };
            match result {
                Ok(s) => {
                    eprintln!(
                        "boot {i} {name}: banner {:.1} ms, agent {:.1} ms, exit {:.1} ms",
                        s.banner.as_secs_f64() * 1e3,
                        s.agent.as_secs_f64() * 1e3,
                        s.exit.as_secs_f64() * 1e3
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
    let figure = |f: fn(&Sample) -> Duration| {
        let r = median(runm.iter().map(f).collect());
        let q = median(qemu.iter().map(f).collect());
        (r, q)
    };
    let row = |label: &str, (r, q): (f64, f64)| {
        println!("{label} runm={r:.1} qemu={q:.1} ratio={:.2}", r / q);
    };
    println!("# medians over {boots} boots each, milliseconds; ratio = runm/qemu");
    row("start_to_banner_ms", figure(|s| s.banner));
    row("banner_to_exit_ms", figure(|s| s.exit - s.banner));
    let to_agent = figure(|s| s.agent);

    let dir = TempDir::new("bench-idle");
    let mut runm_idle = runm_cmd();
    runm_idle.args(["--no-agent", "--timeout", "600", "--vsock-socket"]);
    runm_idle.arg(dir.join("vsock.sock"));
    let measured = [
        ("runm", idle_rss(runm_idle)),
        ("qemu", idle_rss(qemu_cmd(&kernel, &initrd))),
    ];
    let mut overhead = [0u64; 2];
    for (i, (name, m)) in measured.iter().enumerate() {
        match m {
            Ok((total, guest)) => {
                println!(
                    "{name}_idle_rss_kib total={total} guest_ram={guest} overhead={}",
                    total - guest
                );
                overhead[i] = total - guest;
            }
            Err(e) => {
                eprintln!("{name} idle memory: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "vmm_overhead_ratio runm/qemu={:.2}",
        overhead[0] as f64 / overhead[1].max(1) as f64
    );
    row("boot_to_agent_ms", to_agent);
    println!("vmm_overhead_kib {}", overhead[0]);
}
