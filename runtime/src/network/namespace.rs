//! The container's network namespace on the host: its host process (the pid in
//! `state`, which Docker's SetKey, podman and CNI configure through
//! `/proc/PID/ns/net`) lives in it, so whatever a client programs there lands in that
//! namespace and never in the host's.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("cannot open the network namespace {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {}: {source}", .path.display())]
    Join { path: PathBuf, source: nix::Error },
    #[error("cannot make a network namespace for the container: {0}")]
    New(nix::Error),
    #[error("the thread that runs in another network namespace died")]
    Thread,
    #[error("cannot bring the new network namespace's loopback up: {0}")]
    Loopback(rtnl::RtnlError),
}

fn loopback_up() -> Result<(), rtnl::RtnlError> {
    let mut nl = rtnl::Rtnl::new()?;
    for link in nl.links()?.into_iter().filter(|l| l.loopback) {
        nl.set_up(link.index, true)?;
    }
    Ok(())
}

/// The network namespace the config asks for: `Some(path)` to join one, `Some(None)` for a
/// new one, `None` when it has none (host networking, which a VM cannot share).
pub fn requested(spec: &Spec) -> Option<Option<PathBuf>> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)
        .map(|ns| ns.path().clone())
}

/// Moves this thread, and every thread it starts from now on, into the container's
/// network namespace: the one at `path`, else a new one. Call it on the main thread
/// before any other starts, so that `/proc/PID/ns/net` (the main thread's) is that one.
/// (Hooks go back to the host's: see `crate::namespaces`.)
pub fn enter(path: Option<&Path>) -> Result<(), NamespaceError> {
    let open = |path: &Path| {
        File::open(path).map_err(|source| NamespaceError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    match path {
        Some(path) => {
            let ns = open(path)?;
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NamespaceError::Join {
                path: path.to_path_buf(),
                source,
            })?;
        }
        None => {
            unshare(CloneFlags::CLONE_NEWNET).map_err(NamespaceError::New)?;
            // runc brings a new namespace's loopback up; clients (Docker's embedded DNS
            // on 127.0.0.11) count on it.
            loopback_up().map_err(NamespaceError::Loopback)?;
        }
    }
    Ok(())
}

/// Runs `f` on a thread in the network namespace at `path`.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NamespaceError> {
    let ns = File::open(path).map_err(|source| NamespaceError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NamespaceError::Join {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NamespaceError::Thread)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requested_namespace_is_read_from_the_config() {
        let spec = Spec::default();
        assert_eq!(requested(&spec), Some(None));
        let mut c = serde_json::to_value(Spec::default()).unwrap();
        c["linux"]["namespaces"] = serde_json::json!([{"type": "network", "path": "/run/netns/x"}]);
        let spec: Spec = serde_json::from_value(c.clone()).unwrap();
        assert_eq!(requested(&spec), Some(Some(PathBuf::from("/run/netns/x"))));
        c["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}]);
        let spec: Spec = serde_json::from_value(c).unwrap();
        assert_eq!(requested(&spec), None);
    }
}
