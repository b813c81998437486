//! The filesystem benchmark's workload, run the same way in a container (on virtio-fs or
//! on a virtio-blk disk) and directly on the host: `fsbench <work dir> <input dir>`.
//! A static binary with its own clock, so no shell loop or missing `date +%N` colours the
//! figures. Prints one `fsbench <name> <value>` line per measure.
//!
//! The input dir holds `big.bin` (read sequentially) and `tree.tar` (unpacked with
//! `busybox tar`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const FILES: usize = 10_000;
const WRITE_MIB: usize = 128;
const CHUNK: usize = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, work, input] = args.as_slice() else {
        eprintln!("usage: fsbench <work dir> <input dir>");
        std::process::exit(2);
    };
    if let Err(e) = run(Path::new(work), Path::new(input)) {
        eprintln!("fsbench: {e}");
        std::process::exit(1);
    }
}

fn report(name: &str, value: f64) {
    println!("fsbench {name} {value:.1}");
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn run(work: &Path, input: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(work)?;
    let chunk = vec![0x5a_u8; CHUNK];
    let t = Instant::now();
    let mut f = File::create(work.join("seq.bin"))?;
    for _ in 0..WRITE_MIB {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    drop(f);
    report(
        "seq_write_mib_s",
        WRITE_MIB as f64 / t.elapsed().as_secs_f64(),
    );
    std::fs::remove_file(work.join("seq.bin"))?;

    let mut buf = vec![0_u8; CHUNK];
    let t = Instant::now();
    let mut f = File::open(input.join("big.bin"))?;
    let mut total = 0_usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    report(
        "seq_read_mib_s",
        total as f64 / CHUNK as f64 / t.elapsed().as_secs_f64(),
    );

    let dir = work.join("files");
    std::fs::create_dir_all(&dir)?;
    let names: Vec<_> = (0..FILES).map(|i| dir.join(format!("f{i}"))).collect();
    let t = Instant::now();
    for n in &names {
        File::create(n)?;
    }
    report("create_10k_ms", ms(t));
    let t = Instant::now();
    for n in &names {
        std::fs::metadata(n)?;
    }
    report("stat_10k_ms", ms(t));
    let t = Instant::now();
    for n in &names {
        std::fs::remove_file(n)?;
    }
    report("delete_10k_ms", ms(t));

    let tree = work.join("tree");
    std::fs::create_dir_all(&tree)?;
    let t = Instant::now();
    let status = Command::new("busybox")
        .args(["tar", "-xf"])
        .arg(input.join("tree.tar"))
        .arg("-C")
        .arg(&tree)
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("tar: {status}")));
    }
    // As for the sequential write: the result counts once it is on the storage.
    nix::unistd::sync();
    report("untar_ms", ms(t));
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}
