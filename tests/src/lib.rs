//! Helpers shared by runm's integration tests: find the built binaries, check that this
//! machine can boot a microVM, run `runm` with a deadline, and look for leftovers.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub mod bundle;
pub mod clients;
pub mod net;
pub mod tty;

/// The agent's banner, as far as it does not depend on the kernel.
pub const BANNER_PREFIX: &str = "runm-agent ready (kernel ";

/// Where cargo put this test's sibling binaries (`target/<profile>/`).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The `runm` binary built alongside the tests.
pub fn runm_bin() -> PathBuf {
    let bin = target_profile_dir().join("runm");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`make test` does)",
        bin.display()
    );
    bin
}

/// Why this machine's /dev/kvm cannot boot a Linux guest, if it cannot.
pub fn kvm_unusable_reason() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm does not exist".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Some("/dev/kvm is backed by PVM, which cannot run a normal Linux guest".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return Some("the CPU exposes neither vmx nor svm".into());
    }
    None
}

/// Fails the test (never skips it silently) where a microVM cannot be booted.
pub fn require_kvm() {
    if let Some(why) = kvm_unusable_reason() {
        panic!(
            "this test boots a microVM and needs KVM that can run Linux, but {why}. \
             Run the integration tests with `make test`: it runs them inside the emulated \
             KVM test host (tests/testhost/run) when needed."
        );
    }
}

/// Serialises tests that start VMs, so that checks for leftover processes see only
/// their own test's.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `runm ARGS` to completion, killing it after `deadline` (a test failure).
pub fn run_runm(args: &[&str], deadline: Duration) -> Output {
    run_runm_in(args, deadline, None)
}

/// Runs `runm ARGS` with `stdin` (or an empty stdin), killing it after `deadline`.
pub fn run_runm_in(args: &[&str], deadline: Duration, stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(runm_bin());
    cmd.args(args);
    run_command(cmd, deadline, stdin)
}

/// Runs `runm ARGS` with `env` added to its environment, killing it after `deadline`.
pub fn run_runm_env(args: &[&str], env: &[(&str, &OsStr)], deadline: Duration) -> Output {
    let mut cmd = Command::new(runm_bin());
    cmd.args(args).envs(env.iter().copied());
    run_command(cmd, deadline, None)
}

/// Runs `cmd` to completion with `stdin` (or an empty stdin), its output captured;
/// kills it and fails the test after `deadline`.
pub fn run_command(cmd: Command, deadline: Duration, stdin: Option<&[u8]>) -> Output {
    let what = format!("{cmd:?}");
    try_run_command(cmd, deadline, stdin)
        .unwrap_or_else(|| panic!("{what} did not finish within {deadline:?}"))
}

/// Like [`run_command`], but a command still running after `deadline` is killed and
/// gives `None`.
pub fn try_run_command(
    mut cmd: Command,
    deadline: Duration,
    stdin: Option<&[u8]>,
) -> Option<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &data);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(out) => Some(out.unwrap_or_else(|e| panic!("cannot wait for {what}: {e}"))),
        Err(_) => {
            let _ = send_signal(pid, "KILL");
            None
        }
    }
}

/// Sends SIG`signal` to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
}

/// Pids of live processes for which `keep(pid)` holds.
fn processes_where(keep: impl Fn(u32) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| keep(*pid))
        .collect()
}

/// Pids of live processes whose executable is `exe`.
pub fn processes_running(exe: &Path) -> Vec<u32> {
    processes_where(|pid| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p == exe)
            .unwrap_or(false)
    })
}

/// Pids of live processes named `comm` (as `/proc/<pid>/comm` has it).
pub fn processes_named(comm: &str) -> Vec<u32> {
    processes_where(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end() == comm)
            .unwrap_or(false)
    })
}

/// Whether a benchmark binary should run: not when cargo only lists benchmarks
/// (`--list`), nor where no microVM can boot (it says so and is skipped).
pub fn bench_should_run() -> bool {
    if std::env::args().any(|a| a == "--list") {
        return false;
    }
    if let Some(why) = kvm_unusable_reason() {
        println!("skipped: {why}");
        return false;
    }
    true
}

/// The median of benchmark figures (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Makes `image` (`size`, e.g. `64M`) an ext4 filesystem holding a copy of `from`.
pub fn make_ext4_image(from: &Path, image: &Path, size: &str) {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(from)
        .arg(image)
        .arg(size)
        .output()
        .expect("mkfs.ext4 (apt install e2fsprogs)");
    assert!(out.status.success(), "mkfs.ext4: {}", describe(&out));
}

/// Mount points at or under `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy().into_owned();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir))
        .map(String::from)
        .collect()
}

/// Asserts that no `runm` process, and no virtio-fs server runm started, outlived the
/// command under test.
pub fn assert_no_runm_left() {
    let bin = runm_bin();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = processes_running(&bin);
        left.extend(processes_named("virtiofsd"));
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "runm or virtiofsd processes left behind: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where runm keeps its containers' socket directories (the runtime's `SOCKETS_BASE`).
pub const SOCKETS_BASE: &str = "/run/runm-sockets";

/// Asserts that no container's socket directory is left (the tests run one container
/// at a time, each in a test host with a fresh `/run`).
pub fn assert_no_socket_dirs_left() {
    let left: Vec<_> = std::fs::read_dir(SOCKETS_BASE)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "socket directories left behind: {left:?}");
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The integration tests' guest initramfs (`tests/guest` as /init; `make test-guest`).
pub fn test_initramfs() -> PathBuf {
    let path = target_profile_dir().join("../guest/test-initramfs.cpio");
    assert!(
        path.is_file(),
        "{} is missing: build it with `make test-guest`",
        path.display()
    );
    path
}

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("runm-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `result: ...` lines the test guest printed.
pub fn guest_results(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("result: "))
        .map(str::to_string)
        .collect()
}
