//! virtio devices in a real guest: the agent over vsock, many concurrent vsock streams,
//! block devices (read-write and read-only), virtio-fs through virtiofsd, and SMP.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runm_tests::*;

const DEADLINE: Duration = Duration::from_secs(900);

#[test]
fn the_agent_answers_a_ping_over_vsock() {
    require_kvm();
    let _vm = vm_lock();
    let out = run_runm(&["boot"], DEADLINE);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("agent ready: "))
        .unwrap_or_else(|| panic!("no ping reply\n{}", describe(&out)));
    let expected = format!(
        "agent ready: runm-agent {} (protocol {}, kernel 6.12.",
        env!("CARGO_PKG_VERSION"),
        runm_protocol::PROTOCOL_VERSION
    );
    assert!(line.starts_with(&expected), "{line}");
    assert_no_runm_left();
}

/// A deterministic, stream-specific byte pattern.
fn pattern(stream: usize, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32.wrapping_mul(u32::try_from(stream).unwrap() + 1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Opens a stream to guest port `port` through the hybrid vsock socket, retrying while
/// the guest boots.
fn vsock_connect(uds: &Path, port: u32, deadline: Instant) -> UnixStream {
    loop {
        let attempt = (|| -> std::io::Result<UnixStream> {
            let mut s = UnixStream::connect(uds)?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut line = String::new();
            BufReader::new(s.try_clone()?).read_line(&mut line)?;
            if line.starts_with("OK ") {
                Ok(s)
            } else {
                Err(std::io::Error::other(format!("handshake: {line:?}")))
            }
        })();
        match attempt {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("cannot reach guest port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn sixty_four_concurrent_vsock_streams_each_echo_one_mib() {
    const STREAMS: usize = 64;
    const LEN: usize = 1 << 20;
    require_kvm();
    let _vm = vm_lock();
    let dir = TempDir::new("echo");
    let uds = dir.join("vsock.sock");
    let initrd = test_initramfs();
    let log = dir.join("runm.log");
    let mut child = Command::new(runm_bin())
        .args(["boot", "--no-agent", "--timeout", "600"])
        .arg("--initrd")
        .arg(&initrd)
        .arg("--vsock-socket")
        .arg(&uds)
        .args(["--cmdline", &format!("runm.test=echo:{STREAMS}")])
        // Why a stream ended early is in the vsock device's log. It goes to a file: a
        // pipe nobody reads before the end would stall the VMM once it is full.
        .env("RUST_LOG", "info,vmm::devices::virtio::vsock=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn runm");

    let deadline = Instant::now() + Duration::from_secs(300);
    while !uds.exists() {
        assert!(Instant::now() < deadline, "vsock socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let workers: Vec<_> = (0..STREAMS)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let stream = vsock_connect(&uds, 5000, deadline);
                let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
                let data = pattern(i, LEN);
                let expected = data.clone();
                let writer = std::thread::spawn(move || -> std::io::Result<()> {
                    let mut w = stream;
                    w.write_all(&data)?;
                    w.shutdown(std::net::Shutdown::Write)
                });
                let mut echoed = Vec::with_capacity(LEN);
                let read = reader.read_to_end(&mut echoed);
                let wrote = writer.join().expect("the writer thread panicked");
                let at = format!("stream {i} ({} bytes back)", echoed.len());
                wrote.map_err(|e| format!("{at}: write: {e}"))?;
                read.map_err(|e| format!("{at}: read: {e}"))?;
                if echoed.len() != LEN {
                    return Err(format!("{at}: a wrong length"));
                }
                if echoed != expected {
                    return Err(format!("{at}: different bytes"));
                }
                Ok(())
            })
        })
        .collect();
    let failed: Vec<String> = workers
        .into_iter()
        .filter_map(|w| w.join().expect("an echo worker panicked").err())
        .collect();
    if !failed.is_empty() {
        let _ = child.kill();
    }
    let mut out = child.wait_with_output().unwrap();
    out.stderr = std::fs::read(&log).unwrap_or_default();
    assert!(failed.is_empty(), "{failed:#?}\n{}", describe(&out));
    assert!(out.status.success(), "{}", describe(&out));
    let results = guest_results(&out);
    assert!(
        results.contains(&format!(
            "echoed {} bytes over {STREAMS} streams",
            STREAMS * LEN
        )),
        "{results:?}\n{}",
        describe(&out)
    );
    assert!(!uds.exists(), "the vsock socket outlived the VM");
    assert_no_runm_left();
}

#[test]
fn block_writes_reach_the_host_and_a_read_only_disk_refuses_writes() {
    require_kvm();
    let _vm = vm_lock();
    let dir = TempDir::new("disk");
    let rw = dir.join("rw.img");
    let ro = dir.join("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).unwrap();
    let ro_content = pattern(7, 1 << 20);
    std::fs::write(&ro, &ro_content).unwrap();
    let token = format!("runm-disk-{}", std::process::id());
    let out = run_runm(
        &[
            "boot",
            "--no-agent",
            "--initrd",
            test_initramfs().to_str().unwrap(),
            "--disk",
            rw.to_str().unwrap(),
            "--disk",
            &format!("{},ro", ro.display()),
            "--cmdline",
            &format!("runm.test=disk:{token}"),
        ],
        DEADLINE,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let results = guest_results(&out);
    assert!(
        results.contains(&"vda readback matches".to_string()),
        "{results:?}"
    );
    assert!(
        results.contains(&"vdb ro flag 1".to_string()),
        "{results:?}"
    );
    assert!(
        results.iter().any(|r| r.starts_with("vdb write refused")),
        "{results:?}"
    );
    let host = std::fs::read(&rw).unwrap();
    assert_eq!(
        &host[..token.len()],
        token.as_bytes(),
        "the guest's write is not on the host"
    );
    assert!(
        std::fs::read(&ro).unwrap() == ro_content,
        "the read-only image changed"
    );
    assert_no_runm_left();
}

#[test]
fn guests_see_two_and_four_vcpus() {
    require_kvm();
    let _vm = vm_lock();
    let initrd = test_initramfs();
    for n in [2u8, 4] {
        let out = run_runm(
            &[
                "boot",
                "--no-agent",
                "--cpus",
                &n.to_string(),
                "--initrd",
                initrd.to_str().unwrap(),
                "--cmdline",
                "runm.test=cpus",
            ],
            DEADLINE,
        );
        assert!(out.status.success(), "{}", describe(&out));
        let want = format!("cpus online 0-{} ({n})", n - 1);
        assert!(
            guest_results(&out).contains(&want),
            "{want}\n{}",
            describe(&out)
        );
    }
    assert_no_runm_left();
}

#[test]
fn a_missing_disk_image_is_named_and_nothing_is_left() {
    let _vm = vm_lock();
    let dir = TempDir::new("nodisk");
    let uds = dir.join("vsock.sock");
    let out = run_runm(
        &[
            "boot",
            "--disk",
            "/nonexistent/disk.img",
            "--vsock-socket",
            uds.to_str().unwrap(),
        ],
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/disk.img"), "{}", describe(&out));
    assert!(!uds.exists(), "a vsock socket was left behind");
    assert_no_runm_left();
}

/// virtiofsd: `$RUNM_VIRTIOFSD`, else the one `make` put beside `runm`, else
/// `~/.cargo/bin/virtiofsd`, else the first on PATH.
fn virtiofsd_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("RUNM_VIRTIOFSD") {
        return path.into();
    }
    let beside_runm = runm_tests::target_profile_dir().join("virtiofsd");
    let cargo_bin = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd"));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("virtiofsd"))
            .find(|p| p.is_file())
    });
    Some(beside_runm)
        .filter(|p| p.is_file())
        .or(cargo_bin.filter(|p| p.is_file()))
        .or(on_path)
        .expect("virtiofsd not found: set RUNM_VIRTIOFSD, or run `make` (it builds virtiofsd)")
}

/// A child process killed and reaped when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn virtio_fs_shares_a_host_directory_both_ways() {
    const TAG: &str = "hostshare";
    require_kvm();
    let _vm = vm_lock();
    let dir = TempDir::new("virtiofs");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    let greeting = format!("hello from the host {}", std::process::id());
    std::fs::write(shared.join("from-host"), format!("{greeting}\n")).unwrap();
    let sock = dir.join("virtiofsd.sock");
    let log = std::fs::File::create(dir.join("virtiofsd.log")).unwrap();
    let virtiofsd = Reaped(
        Command::new(virtiofsd_bin())
            .arg("--shared-dir")
            .arg(&shared)
            .arg("--socket-path")
            .arg(&sock)
            .args(["--sandbox", "none", "--cache", "auto"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn virtiofsd"),
    );

    // runm waits a short while for the socket; virtiofsd creates it at once.
    let out = run_runm(
        &[
            "boot",
            "--no-agent",
            "--initrd",
            test_initramfs().to_str().unwrap(),
            "--fs",
            &format!("{TAG}={}", sock.display()),
            "--cmdline",
            &format!("runm.test=fs:{TAG}"),
        ],
        DEADLINE,
    );
    drop(virtiofsd);
    let virtiofsd_log = std::fs::read_to_string(dir.join("virtiofsd.log")).unwrap_or_default();
    let context = format!("{}\n--- virtiofsd ---\n{virtiofsd_log}", describe(&out));
    assert!(out.status.success(), "{context}");
    let results = guest_results(&out);
    for want in [
        format!("mounted {TAG}"),
        format!("from-host {greeting}"),
        "created 100 files and removed them".to_string(),
        format!("unmounted {TAG}"),
    ] {
        assert!(
            results.contains(&want),
            "{want:?} in {results:?}\n{context}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(shared.join("from-guest")).unwrap_or_default(),
        format!("written by the guest through {TAG}\n"),
        "{context}"
    );
    assert!(!shared.join("many").exists(), "{context}");
    assert_no_runm_left();
}
