//! The container tools people already use, driving runm unchanged: each with its own
//! storage and state under a test's temporary directory, and an image made from Debian's
//! busybox (no registry is reachable from the test host).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::bundle::busybox_rootfs;
use crate::{describe, run_command, runm_bin, send_signal, try_run_command, TempDir};

/// The name the busybox image is imported under.
pub const IMAGE: &str = "localhost/runm-test-busybox:latest";

/// A tarball of a busybox root filesystem (`podman import`, `docker import`).
pub fn busybox_rootfs_tar(dir: &TempDir) -> PathBuf {
    let rootfs = dir.join("image-rootfs");
    busybox_rootfs(&rootfs);
    let tar = dir.join("busybox-rootfs.tar");
    make_tar(&tar, &rootfs, &["."]);
    tar
}

/// Writes the tarball `archive` of `entries` of `dir`.
fn make_tar(archive: &Path, dir: &Path, entries: &[&str]) {
    let out = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(archive)
        .args(entries)
        .output()
        .expect("run tar");
    assert!(out.status.success(), "tar: {}", describe(&out));
}

/// A docker-archive (the `docker save` format: `manifest.json`, the image config and one
/// layer) of the busybox rootfs, tagged [`IMAGE`]: `docker load` and `ctr image import`
/// both take it.
pub fn busybox_image_archive(dir: &TempDir) -> PathBuf {
    let layer = std::fs::read(busybox_rootfs_tar(dir)).expect("read the rootfs tarball");
    let layer_id = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_id}")]},
    })
    .to_string();
    let config_name = format!("{}.json", sha256_hex(config.as_bytes()));
    let layer_name = format!("{layer_id}/layer.tar");
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [IMAGE],
        "Layers": [layer_name],
    }]);
    let staging = dir.join("image-archive");
    std::fs::create_dir_all(staging.join(&layer_id)).expect("create the archive dir");
    std::fs::write(staging.join(&layer_name), &layer).expect("write the layer");
    std::fs::write(staging.join(&config_name), &config).expect("write the image config");
    std::fs::write(staging.join("manifest.json"), manifest.to_string())
        .expect("write manifest.json");
    let archive = dir.join("busybox-image.tar");
    make_tar(
        &archive,
        &staging,
        &["manifest.json", &config_name, &layer_id],
    );
    archive
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Fails the test, naming the package, when `tool` is not installed.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed: `make deps` installs it (Debian package {package})"
    );
}

/// Runs a client's command, asserts it succeeded and returns its stdout.
fn succeed(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let out = run_command(cmd, Duration::from_secs(180), None);
    assert!(out.status.success(), "{what}: {}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts a daemon with its stdout and stderr in `log`.
fn spawn_daemon(mut cmd: Command, log: &Path) -> std::process::Child {
    let file = std::fs::File::create(log).expect("create the daemon's log");
    cmd.stdout(file.try_clone().expect("dup the log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Waits until `probe` (a client command) succeeds, which says the daemon serves; fails
/// the test with the daemon's log after `within`.
fn wait_until_serving(probe: impl Fn() -> Command, log: &Path, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    // A probe the daemon does not answer yet (it accepted, but is still starting) is
    // tried again, until `within`.
    while !try_run_command(probe(), Duration::from_secs(30), None)
        .is_some_and(|o| o.status.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not start serving: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A container client's command line, bound to its own state (and daemon, if any).
pub trait Client {
    /// The client's command with `args`, not yet run.
    fn command(&self, args: &[&str]) -> Command;

    /// The directory holding the client's state.
    fn dir(&self) -> &Path;

    /// Runs the client to completion (a test failure after `deadline`).
    fn run(&self, args: &[&str], deadline: Duration) -> Output {
        run_command(self.command(args), deadline, None)
    }

    /// Runs the client and asserts it succeeded; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        succeed(self.command(args))
    }
}

/// podman with its own storage, run root and containers.conf, and runm as its runtime.
#[derive(Debug)]
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// A podman whose state lives under `parent`, with the busybox image imported.
    pub fn new(parent: &TempDir) -> Self {
        require_tool("podman", "podman");
        let dir = parent.join("podman");
        std::fs::create_dir_all(&dir).expect("create the podman dir");
        // No systemd in the test host: cgroupfs and a file for events. Debian 12's
        // netavark fails there ("invalid version number"): CNI, which Debian ships as
        // containernetworking-plugins, makes podman's default network.
        let conf = format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/usr/lib/cni\"]\n\
             network_config_dir = \"{}\"\n",
            dir.join("cni").display()
        );
        std::fs::create_dir_all(dir.join("cni")).expect("create the CNI config dir");
        std::fs::write(dir.join("containers.conf"), conf).expect("write containers.conf");
        let podman = Self { dir };
        let tar = busybox_rootfs_tar(parent);
        podman.ok(&["import", "--quiet", tar.to_str().unwrap(), IMAGE]);
        podman
    }

    /// `podman ARGS` with `runtime` (a runc-compatible binary).
    pub fn command_with(&self, runtime: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "overlay", "--runtime"])
            .arg(runtime)
            .args(args);
        c
    }

    /// Removes every container and image, asserting podman managed to.
    pub fn clean_up(&self) {
        self.ok(&["rm", "--all", "--force", "--time", "0"]);
        self.ok(&["rmi", "--all", "--force"]);
    }
}

impl Client for Podman {
    /// `podman ARGS` with runm as the runtime.
    fn command(&self, args: &[&str]) -> Command {
        self.command_with(&runm_bin(), args)
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Podman {
    /// A failed test's containers go too, so that no overlay mount, runm or virtiofsd
    /// outlives it.
    fn drop(&mut self) {
        let t = Duration::from_secs(120);
        let _ = run_command(
            self.command(&["rm", "--all", "--force", "--time", "0"]),
            t,
            None,
        );
        let _ = run_command(self.command(&["rmi", "--all", "--force"]), t, None);
    }
}

/// Runs `cmd` with a terminal as its stdin, stdout and stderr (script(1) gives it one;
/// clients refuse `-it` otherwise), `input` typed into it; the output is captured.
pub fn run_with_a_terminal(cmd: &Command, input: &[u8], deadline: Duration) -> Output {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
    let env = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?))));
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    let line = env.chain(words).collect::<Vec<_>>().join(" ");
    let mut script = Command::new("script");
    script.args(["-qec", &line, "/dev/null"]);
    run_command(script, deadline, Some(input))
}

/// The kernel release this process runs on: a container in a microVM reports its guest
/// kernel's instead.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}

/// A containerd daemon of the test's own (config, root, state and socket under the test's
/// directory), stopped on drop; `ctr` talks to it and runs tasks with the runc shim and
/// runm as its runc binary.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    daemon: std::process::Child,
}

impl Containerd {
    /// Starts containerd under `parent` and imports the busybox image.
    pub fn start(parent: &TempDir) -> Self {
        require_tool("containerd", "containerd");
        let dir = parent.join("containerd");
        std::fs::create_dir_all(&dir).expect("create the containerd dir");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = dir.join("containerd.sock").display(),
        );
        std::fs::write(dir.join("config.toml"), config).expect("write config.toml");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(dir.join("config.toml"));
        let log = dir.join("containerd.log");
        let daemon = spawn_daemon(cmd, &log);
        let containerd = Self { dir, daemon };
        wait_until_serving(
            || containerd.command(&["version"]),
            &log,
            Duration::from_secs(60),
        );
        let archive = busybox_image_archive(parent);
        containerd.ok(&["image", "import", archive.to_str().unwrap()]);
        containerd
    }

    /// Kills and deletes every task and container, removes the images, and asserts
    /// that nothing is listed any more.
    pub fn clean_up(&self) {
        let t = Duration::from_secs(120);
        let ids = self.ok(&["container", "list", "--quiet"]);
        for id in ids.lines() {
            let _ = self.run(&["task", "kill", "--signal", "SIGKILL", id], t);
            let _ = self.run(&["task", "delete", "--force", id], t);
            let _ = self.run(&["container", "delete", id], t);
        }
        let _ = self.run(&["image", "remove", IMAGE], t);
        assert_eq!(self.ok(&["container", "list", "--quiet"]), "");
        assert_eq!(self.ok(&["image", "list", "--quiet"]), "");
    }
}

impl Client for Containerd {
    /// `ctr ARGS` against this daemon.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(args);
        c
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Containerd {
    /// A failed test's tasks go too; then the daemon stops.
    fn drop(&mut self) {
        // A passing test already cleaned up and asserted it.
        if std::thread::panicking() {
            let ids = run_command(
                self.command(&["container", "list", "--quiet"]),
                Duration::from_secs(30),
                None,
            );
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let t = Duration::from_secs(60);
                let _ = run_command(self.command(&["task", "delete", "--force", id]), t, None);
                let _ = run_command(self.command(&["container", "delete", id]), t, None);
            }
        }
        let _ = send_signal(self.daemon.id(), "TERM");
        let _ = self.daemon.wait();
    }
}

/// A dockerd of the test's own (data root, exec root, socket under the test's
/// directory; its default bridge `docker0` with iptables, as a user's), with runm added
/// as runtime `runm`; stopped on drop.
#[derive(Debug)]
pub struct Dockerd {
    dir: PathBuf,
    daemon: std::process::Child,
}

/// Debian's docker CLI: the one that matches its dockerd (another may come first in PATH).
const DOCKER: &str = "/usr/bin/docker";

impl Dockerd {
    /// Starts dockerd under `parent` and loads the busybox image.
    pub fn start(parent: &TempDir) -> Self {
        Self::start_with_runtimes(parent, &[])
    }

    /// `start`, with more runtimes (name, path) beside `runm`.
    pub fn start_with_runtimes(parent: &TempDir, runtimes: &[(&str, &Path)]) -> Self {
        require_tool("dockerd", "docker.io");
        let dir = parent.join("docker");
        std::fs::create_dir_all(&dir).expect("create the docker dir");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--add-runtime")
            .arg(format!("runm={}", runm_bin().display()))
            .args(runtimes.iter().flat_map(|(name, path)| {
                [
                    "--add-runtime".to_string(),
                    format!("{name}={}", path.display()),
                ]
            }))
            .args(["--storage-driver", "overlay2"]);
        let log = dir.join("dockerd.log");
        let daemon = spawn_daemon(cmd, &log);
        let docker = Self { dir, daemon };
        wait_until_serving(
            || docker.command(&["version"]),
            &log,
            Duration::from_secs(120),
        );
        let archive = busybox_image_archive(parent);
        docker.ok(&["load", "--input", archive.to_str().unwrap()]);
        docker
    }

    /// Removes every container and image, and asserts that none is listed any more.
    pub fn clean_up(&self) {
        let ids = self.ok(&["ps", "--all", "--quiet"]);
        for id in ids.lines() {
            self.ok(&["rm", "--force", id]);
        }
        self.ok(&["rmi", "--force", IMAGE]);
        assert_eq!(self.ok(&["ps", "--all", "--quiet"]), "");
        assert_eq!(self.ok(&["images", "--quiet"]), "");
    }
}

impl Client for Dockerd {
    /// `docker ARGS` against this daemon.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("--host")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()))
            .args(args);
        c
    }

    fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Dockerd {
    /// A failed test's containers go too; then the daemon stops (and its containerd).
    fn drop(&mut self) {
        if std::thread::panicking() {
            let t = Duration::from_secs(60);
            let ids = run_command(self.command(&["ps", "--all", "--quiet"]), t, None);
            for id in String::from_utf8_lossy(&ids.stdout).lines() {
                let _ = run_command(self.command(&["rm", "--force", id]), t, None);
            }
        }
        let _ = send_signal(self.daemon.id(), "TERM");
        let _ = self.daemon.wait();
    }
}
