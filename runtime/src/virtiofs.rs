//! The sandbox's shared directory and the virtio-fs server that serves it to the guest.
//!
//! Each sandbox gets one `virtiofsd` (a vhost-user backend; the VMM is its frontend)
//! serving `<state dir>/shared`. The rootfs and every bind-mount source are
//! bind-mounted into that directory, read-only where asked, *inside a mount namespace
//! made for virtiofsd alone*: the mounts are never visible on the host and vanish with
//! virtiofsd however runm ends (even on SIGKILL), so nothing is left mounted. virtiofsd
//! then confines itself to the directory with its own namespace sandbox (pivot_root
//! into it, seccomp), so `..`, absolute symlinks and file handles from the guest all
//! resolve inside it; it never follows a symlink on the guest's behalf.
//!
//! The listening socket is made here and handed to virtiofsd as an fd (`--fd`), so it
//! exists before the VMM connects, and a virtiofsd that died refuses the connection
//! instead of leaving it waiting.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::mount::{mount, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::mounts::{Share, ShareKind};

/// The virtio-fs tag the guest mounts.
pub const TAG: &str = "runm";
/// Chooses the cache mode for one container (else the config file's, else the default).
pub const ANNOTATION_CACHE: &str = "io.runm.virtiofs.cache";
const SHARED_DIR: &str = "shared";
const SOCKET: &str = "fs.sock";
const LOG: &str = "virtiofsd.log";
/// The fd number virtiofsd finds its listening socket at.
const SOCKET_FD: i32 = 3;

/// virtiofsd's `--cache`: how long the guest may trust what it has cached. See
/// BENCHMARKS.md for what each costs; `auto` lets the guest cache file data until the
/// file changes on open and metadata for a second, so host changes show up soon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    Never,
    Metadata,
    #[default]
    Auto,
    Always,
}

impl CacheMode {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }

    fn as_arg(self) -> &'static str {
        match self {
            CacheMode::Never => "never",
            CacheMode::Metadata => "metadata",
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error("cannot prepare {}: {source}", .path.display())]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make a private mount namespace for virtiofsd: {0}")]
    Namespace(nix::Error),
    #[error("cannot share {} into the VM (as {name}): {errno}", .host_path.display())]
    Bind {
        host_path: PathBuf,
        name: String,
        errno: nix::Error,
    },
    #[error("cannot start {}: {source}", .binary.display())]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the thread that starts virtiofsd died")]
    Thread,
}

/// A running virtiofsd; stopped (killed) on drop.
#[derive(Debug)]
pub struct FsServer {
    pid: Pid,
    socket: PathBuf,
    log: PathBuf,
    /// Waits for virtiofsd; its exit is virtiofsd's parent-death signal.
    waiter: Option<JoinHandle<()>>,
    /// Gets how virtiofsd ended, when it does.
    exited: Option<mpsc::Receiver<String>>,
}

impl FsServer {
    /// Prepares `<state_dir>/shared` with a mount point per share and starts virtiofsd
    /// on it, listening in `sockets_dir`.
    pub fn start(
        state_dir: &Path,
        sockets_dir: &Path,
        shares: &[Share],
        binary: &Path,
        cache: CacheMode,
    ) -> Result<Self, VirtiofsError> {
        fn prepare(path: &Path) -> impl FnOnce(std::io::Error) -> VirtiofsError + '_ {
            move |source| VirtiofsError::Prepare {
                path: path.to_path_buf(),
                source,
            }
        }
        let shared = state_dir.join(SHARED_DIR);
        std::fs::create_dir(&shared).map_err(prepare(&shared))?;
        for share in shares {
            let target = shared.join(&share.name);
            match share.kind {
                ShareKind::Dir => std::fs::create_dir(&target).map(drop),
                ShareKind::File => File::create(&target).map(drop),
            }
            .map_err(prepare(&target))?;
        }
        let socket = sockets_dir.join(SOCKET);
        let listener = vmm::uds::bind(&socket).map_err(prepare(&socket))?;
        let log = state_dir.join(LOG);
        let log_file = File::create(&log).map_err(prepare(&log))?;
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--fd={SOCKET_FD}"))
            .arg("--shared-dir")
            .arg(&shared)
            .arg(format!("--cache={}", cache.as_arg()))
            .args(["--sandbox=namespace", "--announce-submounts", "--xattr"])
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(prepare(&log))?)
            .stderr(log_file);
        let job = Job {
            shares: shares.to_vec(),
            shared,
            binary: binary.to_path_buf(),
            listener: listener.into(),
            cmd,
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let (exit_tx, exited) = mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("virtiofsd".into())
            .spawn(move || job.run(tx, exit_tx))
            .map_err(|_| VirtiofsError::Thread)?;
        match rx.recv() {
            Ok(Ok(pid)) => Ok(Self {
                pid,
                socket,
                log,
                waiter: Some(waiter),
                exited: Some(exited),
            }),
            Ok(Err(e)) => {
                let _ = waiter.join();
                Err(e)
            }
            Err(_) => Err(VirtiofsError::Thread),
        }
    }

    /// The vhost-user socket the VMM connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The last lines virtiofsd logged, for an error message.
    pub fn log_tail(&self) -> String {
        crate::last_lines(&self.log, 5)
    }

    /// Says, once, how virtiofsd ended (its exit status, and its last words) when it
    /// does: the guest's files go with it, so its owner must know. Taken once.
    pub fn exited(&mut self) -> Option<mpsc::Receiver<String>> {
        self.exited.take()
    }

    /// Kills virtiofsd and waits for it.
    pub fn stop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        // Once the waiter has finished, the pid may belong to another process.
        if !waiter.is_finished() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
        let _ = waiter.join();
    }
}

impl Drop for FsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the waiter thread does: mounts the shares in a mount namespace of its own
/// (a thread may unshare one), then starts virtiofsd there and waits for it.
struct Job {
    shares: Vec<Share>,
    shared: PathBuf,
    binary: PathBuf,
    listener: OwnedFd,
    cmd: Command,
}

impl Job {
    fn run(
        mut self,
        report: mpsc::SyncSender<Result<Pid, VirtiofsError>>,
        exited: mpsc::Sender<String>,
    ) {
        let mut child = match self.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = report.send(Err(e));
                return;
            }
        };
        drop(self.listener);
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = report.send(Ok(pid));
        let how = match child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        log::debug!("virtiofsd exited: {how}");
        // Nobody listens once the server was stopped on purpose.
        let _ = exited.send(how);
    }

    fn spawn(&mut self) -> Result<std::process::Child, VirtiofsError> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(VirtiofsError::Namespace)?;
        // Nothing mounted here may reach the host; the host's unmounts still reach here.
        let slave = MsFlags::MS_REC | MsFlags::MS_SLAVE;
        mount(None::<&str>, "/", None::<&str>, slave, None::<&str>)
            .map_err(VirtiofsError::Namespace)?;
        for share in &self.shares {
            bind(share, &self.shared.join(&share.name)).map_err(|errno| VirtiofsError::Bind {
                host_path: share.source.clone(),
                name: share.name.clone(),
                errno,
            })?;
        }
        let fd = self.listener.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and makes only
        // async-signal-safe system calls (dup2, fcntl, prctl) on fds it owns there; it
        // allocates nothing.
        unsafe {
            self.cmd.pre_exec(move || {
                // dup2 onto itself would leave close-on-exec set.
                let ok = if fd == SOCKET_FD {
                    nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == 0
                } else {
                    nix::libc::dup2(fd, SOCKET_FD) == SOCKET_FD
                };
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                Ok(())
            });
        }
        self.cmd.spawn().map_err(|source| VirtiofsError::Spawn {
            binary: self.binary.clone(),
            source,
        })
    }
}

/// Bind-mounts a share at `target`, then makes it read-only if asked (a bind mount takes
/// its flags only from a remount).
fn bind(share: &Share, target: &Path) -> nix::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if share.recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(
        Some(&share.source),
        target,
        None::<&str>,
        flags,
        None::<&str>,
    )?;
    if share.readonly {
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(None::<&str>, target, None::<&str>, ro, None::<&str>)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_modes_parse_as_virtiofsd_names_them() {
        assert_eq!(CacheMode::parse("never"), Some(CacheMode::Never));
        assert_eq!(CacheMode::parse("always"), Some(CacheMode::Always));
        assert_eq!(CacheMode::parse("Always"), None);
        assert_eq!(CacheMode::default().as_arg(), "auto");
    }
}
