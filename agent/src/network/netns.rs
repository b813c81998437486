//! Network namespaces: making one that outlives its thread (bind-mounted on a file, as
//! `ip netns add` does), and running work inside one.
//!
//! A network namespace is a per-thread attribute, so both happen on short-lived threads
//! of their own: the agent's other threads stay in the guest's root namespace. Sockets
//! keep the namespace they were made in for life, so what such a thread creates (a
//! netlink socket, the DNS bridge's listeners) may be used from any thread afterwards.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::thread;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rtnl::{Rtnl, RtnlError};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
    #[error("cannot create a network namespace: {0}")]
    Unshare(nix::Error),
    #[error("cannot enter the network namespace: {0}")]
    Enter(nix::Error),
    #[error("cannot bring lo up: {0}")]
    Loopback(RtnlError),
    #[error("cannot create {0}: {1}")]
    Create(PathBuf, io::Error),
    #[error("cannot bind-mount the network namespace on {0}: {1}")]
    Mount(PathBuf, nix::Error),
    #[error("cannot open {0}: {1}")]
    Open(PathBuf, io::Error),
}

/// Runs `work` on a thread of its own that has joined the network namespace `ns`.
pub fn run_in<T: Send>(
    ns: BorrowedFd<'_>,
    work: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    on_thread(move || {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        Ok(work())
    })
}

/// Creates a network namespace with `lo` up, bind-mounts it on `path` (a new file;
/// its directory is created) and returns it open, with what `work`, run inside it,
/// returned.
pub fn create<T: Send>(
    path: &Path,
    work: impl FnOnce() -> T + Send,
) -> Result<(File, T), NetnsError> {
    on_thread(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(NetnsError::Unshare)?;
        loopback_up().map_err(NetnsError::Loopback)?;
        let file = pin(path)?;
        Ok((file, work()))
    })
}

/// Bind-mounts the calling thread's network namespace on `path`; returns it open.
fn pin(path: &Path) -> Result<File, NetnsError> {
    let create = |e| NetnsError::Create(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    File::create(path).map_err(create)?;
    let mounted = mount(
        Some("/proc/thread-self/ns/net"),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    );
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(path);
        return Err(NetnsError::Mount(path.to_path_buf(), e));
    }
    File::open(path).map_err(|e| {
        let _ = umount2(path, MntFlags::MNT_DETACH);
        NetnsError::Open(path.to_path_buf(), e)
    })
}

fn on_thread<T: Send>(
    work: impl FnOnce() -> Result<T, NetnsError> + Send,
) -> Result<T, NetnsError> {
    thread::scope(|s| {
        let worker = thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, work)
            .map_err(NetnsError::Thread)?;
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> Result<(), RtnlError> {
    let mut rtnl = Rtnl::new()?;
    // A new namespace has exactly one loopback; Linux numbers it 1.
    let index = rtnl
        .links()?
        .into_iter()
        .find(|l| l.loopback)
        .map_or(1, |l| l.index);
    rtnl.set_up(index, true)
}

/// The calling thread's network namespace, open (for tests and checks).
pub fn current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Whether two open namespace files are the same namespace.
pub fn same(a: &impl AsFd, b: &impl AsFd) -> bool {
    match (
        nix::sys::stat::fstat(a.as_fd()),
        nix::sys::stat::fstat(b.as_fd()),
    ) {
        (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
        _ => false,
    }
}
