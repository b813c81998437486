//! OCI bundles for the integration tests: a busybox rootfs and a config from `runm spec`,
//! and a `runm` with its own `--root`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{assert_no_socket_dirs_left, run_runm_in, runm_bin, TempDir};

/// The static busybox the rootfs is made of (Debian's busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// Makes `rootfs` a minimal root filesystem: Debian's static busybox with a link for
/// each of its applets in `/bin`, the usual top-level directories, and a root user.
pub fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("create rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("create rootfs dir");
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox (apt install busybox-static)");
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    let etc = rootfs.join("etc");
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("write passwd");
    std::fs::write(etc.join("group"), "root:x:0:\n").expect("write group");
}

/// A bundle directory: `config.json` and a busybox `rootfs/`.
#[derive(Debug)]
pub struct TestBundle {
    pub dir: PathBuf,
    pub config: serde_json::Value,
}

impl TestBundle {
    /// A bundle under `parent` running `args`, from runm's default spec.
    pub fn busybox(parent: &TempDir, name: &str, args: &[&str]) -> Self {
        let dir = parent.join(name);
        busybox_rootfs(&dir.join("rootfs"));
        let out = Command::new(runm_bin())
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .expect("runm spec");
        assert!(out.status.success(), "runm spec: {}", crate::describe(&out));
        let text = std::fs::read_to_string(dir.join("config.json")).expect("read config.json");
        let mut config: serde_json::Value = serde_json::from_str(&text).expect("parse config.json");
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["terminal"] = false.into();
        config["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        let b = Self { dir, config };
        b.write();
        b
    }

    /// Changes the config and writes it out.
    pub fn edit(&mut self, f: impl FnOnce(&mut serde_json::Value)) {
        f(&mut self.config);
        self.write();
    }

    fn write(&self) {
        std::fs::write(self.dir.join("config.json"), self.config.to_string())
            .expect("write config.json");
    }

    pub fn path(&self) -> &str {
        self.dir.to_str().expect("utf-8 path")
    }
}

/// `runm --root <dir>`: each test's containers in their own state root.
#[derive(Debug)]
pub struct Runm {
    pub root: PathBuf,
}

impl Runm {
    pub fn new(parent: &TempDir) -> Self {
        Self {
            root: parent.join("state"),
        }
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["--root", self.root.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        all
    }

    /// Runs to completion (a test failure after `deadline`), stdin empty.
    pub fn run(&self, args: &[&str], deadline: Duration) -> Output {
        run_runm_in(&self.args(args), deadline, None)
    }

    /// Like [`Runm::run`], with `stdin` as the command's standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8], deadline: Duration) -> Output {
        run_runm_in(&self.args(args), deadline, Some(stdin))
    }

    /// A `runm` command to spawn by hand.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(runm_bin());
        c.args(self.args(args)).stdin(Stdio::null());
        c
    }

    /// The container's state JSON (`runm state`), or None if runm says it does not exist.
    pub fn state(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.run(&["state", id], Duration::from_secs(30));
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("state is JSON"))
    }

    /// The container's status, waiting up to `wait` for it to become `want`.
    pub fn wait_status(&self, id: &str, want: &str, wait: Duration) -> String {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let status = self
                .state(id)
                .map(|s| s["status"].as_str().unwrap_or("").to_string())
                .unwrap_or_else(|| "gone".into());
            if status == want || std::time::Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `args` with a guest kernel that is garbage, so the VM cannot boot, and
    /// asserts that runm fails and names the kernel.
    pub fn assert_unbootable_fails(&self, tmp: &TempDir, args: &[&str]) {
        let kernel = tmp.join("garbage-vmlinux");
        std::fs::write(&kernel, b"not an ELF file").expect("write the garbage kernel");
        let out = self
            .command(args)
            .env("RUNM_KERNEL", &kernel)
            .output()
            .expect("run runm");
        assert!(!out.status.success(), "{}", crate::describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("garbage-vmlinux"),
            "{}",
            crate::describe(&out)
        );
    }

    /// Asserts that no container state is left under the root.
    pub fn assert_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(&self.root)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "state left behind: {left:?}");
        assert_no_socket_dirs_left();
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// A command that leaves processes behind (create, run -d, exec -d): its stdout and
/// stderr go to files, so waiting for it does not wait for those processes.
#[derive(Debug)]
pub struct Detached {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Runm {
    /// Starts `args` with stdout and stderr in files under `dir` (named `name.out`/`.err`).
    pub fn spawn_to_files(&self, dir: &TempDir, name: &str, args: &[&str]) -> Running {
        let out_path = dir.join(&format!("{name}.out"));
        let err_path = dir.join(&format!("{name}.err"));
        let child = self
            .command(args)
            .stdout(std::fs::File::create(&out_path).expect("create stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("create stderr file"))
            .spawn()
            .expect("spawn runm");
        Running {
            child,
            args: format!("{args:?}"),
            out_path,
            err_path,
            state_root: self.root.clone(),
        }
    }

    /// Runs `args` to completion with stdout and stderr in files under `dir`.
    pub fn run_detached(
        &self,
        dir: &TempDir,
        name: &str,
        args: &[&str],
        deadline: Duration,
    ) -> Detached {
        self.spawn_to_files(dir, name, args)
            .wait(std::time::Instant::now() + deadline)
    }
}

/// A runm command started by [`Runm::spawn_to_files`].
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    args: String,
    out_path: PathBuf,
    err_path: PathBuf,
    state_root: PathBuf,
}

impl Running {
    /// Waits until `path` exists; fails the test, with what runm and the guest said so far,
    /// if the command ends first or `deadline` passes.
    pub fn wait_for_path(&mut self, path: &Path, deadline: std::time::Instant) {
        while !path.exists() {
            if let Some(status) = self.child.try_wait().expect("wait for runm") {
                panic!(
                    "runm {} ended ({status}) before {} appeared\n{}",
                    self.args,
                    path.display(),
                    self.said()
                );
            }
            if std::time::Instant::now() > deadline {
                let said = self.said();
                let _ = self.child.kill();
                panic!("{} never appeared\n{said}", path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The command's output so far and the tails of its containers' logs (guest console,
    /// virtiofsd), to explain a failure.
    fn said(&self) -> String {
        let mut all = format!(
            "runm stdout: {}\nrunm stderr: {}",
            std::fs::read_to_string(&self.out_path).unwrap_or_default(),
            std::fs::read_to_string(&self.err_path).unwrap_or_default()
        );
        let dirs = std::fs::read_dir(&self.state_root).into_iter().flatten();
        for dir in dirs.filter_map(|e| e.ok()).map(|e| e.path()) {
            for log in ["console.log", "virtiofsd.log"] {
                let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                let lines: Vec<_> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                all += &format!(
                    "\n--- {} (last 30 lines) ---\n{tail}",
                    dir.join(log).display()
                );
            }
        }
        all
    }

    /// Waits for the command to end; kills it and fails the test after `deadline`.
    pub fn wait(mut self, deadline: std::time::Instant) -> Detached {
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait for runm") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let said = self.said();
                let _ = self.child.kill();
                panic!("runm {} did not finish in time\n{said}", self.args);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Detached {
            status,
            stdout: std::fs::read_to_string(&self.out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&self.err_path).unwrap_or_default(),
        }
    }
}
