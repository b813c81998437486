//! The integration tests' guest init. It runs the scenario named by `runm.test=` on the
//! kernel command line, prints what it observed on the console (one `result: ...` line
//! per fact, for the host-side test to assert), and powers the VM off.
//!
//! Scenarios:
//! - `echo:<n>`: vsock echo server on port 5000; powers off after `n` streams ended.
//! - `disk:<token>`: writes `<token>` at the start of /dev/vda and reads it back, then
//!   tries to write /dev/vdb (attached read-only) and reports the error.
//! - `cpus`: reports the number of online CPUs.
//! - `fsload:<tag>[:big]`: mounts virtio-fs `<tag>` and creates, stats and deletes 10,000
//!   files, reporting each step's time; with `big`, writes and reads 256 MiB first (a load test, also run under QEMU by
//!   `tests/scripts/fsload-vs-qemu.sh`).
//! - `fs:<tag>`: mounts the virtio-fs `<tag>` on /mnt, reports /mnt/from-host, writes
//!   /mnt/from-guest, creates and removes 100 files, and unmounts.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::sys::socket::{setsockopt, sockopt};
use runm_agent::init;
use vsock::{VsockListener, VMADDR_CID_ANY};

const ECHO_PORT: u32 = 5000;
/// How long closing an echo stream may wait for the host to have taken every byte.
const ECHO_LINGER_SECS: i32 = 120;

fn main() {
    if let Err(e) = init::setup() {
        eprintln!("test-guest: {e}");
        init::power_off();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let scenario = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("runm.test="))
        .unwrap_or("");
    println!("test-guest: scenario {scenario:?}");
    let outcome = match scenario.split_once(':').unwrap_or((scenario, "")) {
        ("echo", n) => echo(n.parse().unwrap_or(1)),
        ("disk", token) => disk(token),
        ("cpus", _) => cpus(),
        ("fs", tag) => fs(tag),
        ("fsload", tag) => fsload(tag),
        _ => Err(format!("unknown scenario {scenario:?}")),
    };
    if let Err(e) = outcome {
        println!("result: error: {e}");
    }
    init::power_off();
}

fn echo(streams: usize) -> Result<(), String> {
    let listener = VsockListener::bind_with_cid_port(VMADDR_CID_ANY, ECHO_PORT)
        .map_err(|e| format!("listen on vsock port {ECHO_PORT}: {e}"))?;
    println!("result: echo listening on {ECHO_PORT}");
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for conn in listener.incoming().take(streams) {
        let mut stream = conn.map_err(|e| format!("accept: {e}"))?;
        // A vsock write returns once the bytes are queued in the guest kernel, and the
        // kernel drops that queue when it resets the device at power-off. Lingering makes
        // the close below wait for the device's RST, which it sends only after the host
        // socket took every byte (virtio_transport_close -> virtio_transport_wait_close).
        let linger = nix::libc::linger {
            l_onoff: 1,
            l_linger: ECHO_LINGER_SECS,
        };
        setsockopt(&stream, sockopt::Linger, &linger)
            .map_err(|e| format!("SO_LINGER on an echo stream: {e}"))?;
        let done = done.clone();
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0usize;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        total += n;
                    }
                    Err(_) => break,
                }
            }
            let _ = stream.shutdown(std::net::Shutdown::Write);
            // Waits (lingers) until the host has everything; see above.
            drop(stream);
            done.fetch_add(1, Ordering::SeqCst);
            total
        }));
    }
    let total: usize = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    println!(
        "result: echoed {total} bytes over {} streams",
        done.load(Ordering::SeqCst)
    );
    Ok(())
}

fn disk(token: &str) -> Result<(), String> {
    let mut vda = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open("/dev/vda")
        .map_err(|e| format!("open /dev/vda: {e}"))?;
    // O_DIRECT wants sector-aligned buffers: write a whole 4 KiB block.
    let mut block = AlignedBlock([0u8; 4096]);
    block.0[..token.len()].copy_from_slice(token.as_bytes());
    vda.write_all(&block.0)
        .map_err(|e| format!("write /dev/vda: {e}"))?;
    vda.sync_all().map_err(|e| format!("flush /dev/vda: {e}"))?;
    vda.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut back = AlignedBlock([0u8; 4096]);
    vda.read_exact(&mut back.0)
        .map_err(|e| format!("read /dev/vda: {e}"))?;
    let ok = back.0[..token.len()] == *token.as_bytes();
    println!(
        "result: vda readback {}",
        if ok { "matches" } else { "differs" }
    );

    let ro = std::fs::read_to_string("/sys/block/vdb/ro").unwrap_or_default();
    println!("result: vdb ro flag {}", ro.trim());
    match OpenOptions::new().write(true).open("/dev/vdb") {
        Err(e) => println!("result: vdb write refused: {e}"),
        Ok(mut f) => match f.write_all(b"must not land").and_then(|()| f.sync_all()) {
            Err(e) => println!("result: vdb write refused: {e}"),
            Ok(()) => println!("result: vdb write accepted"),
        },
    }
    Ok(())
}

#[repr(align(4096))]
struct AlignedBlock([u8; 4096]);

fn cpus() -> Result<(), String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map_err(|e| format!("read cpu/online: {e}"))?;
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("result: cpus online {} ({n})", online.trim());
    Ok(())
}

/// Mounts virtio-fs `tag` at /mnt.
fn mount_virtiofs(tag: &str) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all("/mnt").map_err(|e| format!("mkdir /mnt: {e}"))?;
    mount(
        Some(tag),
        "/mnt",
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount -t virtiofs {tag} /mnt: {e}"))?;
    Ok(())
}

fn fs(tag: &str) -> Result<(), String> {
    use nix::mount::umount;
    mount_virtiofs(tag)?;
    println!("result: mounted {tag}");
    let from_host = std::fs::read_to_string("/mnt/from-host")
        .map_err(|e| format!("read /mnt/from-host: {e}"))?;
    println!("result: from-host {}", from_host.trim());
    std::fs::write(
        "/mnt/from-guest",
        format!("written by the guest through {tag}\n"),
    )
    .map_err(|e| format!("write /mnt/from-guest: {e}"))?;

    let many = std::path::Path::new("/mnt/many");
    std::fs::create_dir(many).map_err(|e| format!("mkdir /mnt/many: {e}"))?;
    for i in 0..100 {
        std::fs::write(many.join(format!("file-{i}")), i.to_string())
            .map_err(|e| format!("create file-{i}: {e}"))?;
    }
    let listed = std::fs::read_dir(many)
        .map_err(|e| format!("list /mnt/many: {e}"))?
        .count();
    for i in 0..100 {
        std::fs::remove_file(many.join(format!("file-{i}")))
            .map_err(|e| format!("remove file-{i}: {e}"))?;
    }
    std::fs::remove_dir(many).map_err(|e| format!("rmdir /mnt/many: {e}"))?;
    println!("result: created {listed} files and removed them");

    nix::unistd::sync();
    umount("/mnt").map_err(|e| format!("umount /mnt: {e}"))?;
    println!("result: unmounted {tag}");
    Ok(())
}

fn fsload(arg: &str) -> Result<(), String> {
    let (tag, big) = match arg.split_once(':') {
        Some((tag, "big")) => (tag, true),
        _ => (arg, false),
    };
    mount_virtiofs(tag)?;
    let dir = std::path::Path::new("/mnt/load");
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    if big {
        // 256 MiB written, synced and read back first: the guest's page cache fills.
        use std::io::{Read, Write};
        let path = dir.join("big");
        let chunk = vec![0x5a_u8; 1 << 20];
        let mut f = std::fs::File::create(&path).map_err(|e| format!("create big: {e}"))?;
        for _ in 0..256 {
            f.write_all(&chunk).map_err(|e| format!("write big: {e}"))?;
        }
        f.sync_all().map_err(|e| format!("sync big: {e}"))?;
        let mut back = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut back))
            .map_err(|e| format!("read big: {e}"))?;
        println!("result: big file {} MiB written and read", back.len() >> 20);
    }
    let names: Vec<_> = (0..10_000).map(|i| dir.join(format!("f{i}"))).collect();
    type Step = fn(&std::path::Path) -> std::io::Result<()>;
    let steps: [(&str, Step); 3] = [
        ("create", |p| std::fs::File::create(p).map(drop)),
        ("stat", |p| std::fs::metadata(p).map(drop)),
        ("delete", |p| std::fs::remove_file(p)),
    ];
    for (name, step) in steps {
        let t = std::time::Instant::now();
        for (i, p) in names.iter().enumerate() {
            step(p).map_err(|e| format!("{name} {}: {e}", p.display()))?;
            if i % 2000 == 1999 {
                println!("fsload: {name} {} done", i + 1);
            }
        }
        println!("result: {name} 10000 in {} ms", t.elapsed().as_millis());
    }
    Ok(())
}
