//! The host process's own namespaces. `state.pid` is this process, and callers read
//! `/proc/PID/ns/*` to find the container's namespaces (podman and containerd share
//! them between containers that way). So where the config asks for a new mount, UTS,
//! IPC or cgroup namespace, this process takes a new one of its own: a caller sees the
//! container's there rather than the host's, and a compromised VMM sees less of the
//! host. The network namespace is `network::enter`'s; a running process cannot enter a
//! new PID or user namespace, so those stay the host's.
//!
//! Hooks still run in the runtime's namespaces, as runc runs them: [`HostNamespaces`]
//! keeps the host's and puts a hook's process back into them before it execs.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::unistd::{chroot, fchdir};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum NamespacesError {
    #[error("cannot open {path}, to run hooks in the host's namespaces: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot give the host process new {names} namespaces: {source}")]
    Unshare { names: String, source: nix::Error },
    #[error("cannot make the host process's mount namespace a slave of the host's: {0}")]
    Propagation(nix::Error),
}

/// Every namespace type: as config.json has it, its `CLONE_NEW*` flag, and the name
/// `/proc/PID/ns` gives it.
pub const KINDS: [(LinuxNamespaceType, CloneFlags, &str); 8] = [
    (LinuxNamespaceType::Mount, CloneFlags::CLONE_NEWNS, "mnt"),
    (LinuxNamespaceType::Uts, CloneFlags::CLONE_NEWUTS, "uts"),
    (LinuxNamespaceType::Ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
    (
        LinuxNamespaceType::Cgroup,
        CloneFlags::CLONE_NEWCGROUP,
        "cgroup",
    ),
    (LinuxNamespaceType::Network, CloneFlags::CLONE_NEWNET, "net"),
    (LinuxNamespaceType::User, CloneFlags::CLONE_NEWUSER, "user"),
    (LinuxNamespaceType::Pid, CloneFlags::CLONE_NEWPID, "pid"),
    // CLONE_NEWTIME (linux/sched.h); nix names it only on some targets.
    (
        LinuxNamespaceType::Time,
        CloneFlags::from_bits_retain(0x80),
        "time",
    ),
];

/// The namespaces this process may take new ones of (the first five of [`KINDS`]; the
/// network one is `network::enter`'s), and whose host ones hooks go back to.
fn takeable() -> &'static [(LinuxNamespaceType, CloneFlags, &'static str)] {
    &KINDS[..5]
}

/// The host's namespaces, kept open to return hooks to them.
#[derive(Debug)]
pub struct HostNamespaces {
    /// Each with the `CLONE_NEW*` flag `setns` checks it against.
    files: Vec<(File, CloneFlags)>,
    /// This process's root and working directory in the host's mount namespace:
    /// entering a mount namespace moves both to its root, which under a chroot is not
    /// this process's root.
    root: File,
    cwd: File,
}

/// The new namespaces (no `path`) the config asks for, of those this process can take.
fn wanted(spec: &Spec) -> CloneFlags {
    let listed = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut flags = CloneFlags::empty();
    for ns in listed.iter().filter(|ns| ns.path().is_none()) {
        if let Some((_, flag, _)) = takeable()
            .iter()
            .find(|(t, _, _)| *t == ns.typ() && *t != LinuxNamespaceType::Network)
        {
            flags |= *flag;
        }
    }
    flags
}

fn names(flags: CloneFlags) -> String {
    let names: Vec<&str> = takeable()
        .iter()
        .filter(|(_, f, _)| flags.contains(*f))
        .map(|(_, _, n)| *n)
        .collect();
    names.join(", ")
}

/// Keeps the host's namespaces, then gives this process a new namespace of each kind
/// the config asks a new one of. Call it before any other thread starts: a process
/// whose threads share its filesystem context cannot take a new mount namespace.
pub fn isolate(spec: &Spec) -> Result<HostNamespaces, NamespacesError> {
    let open =
        |path: String| File::open(&path).map_err(|source| NamespacesError::Open { path, source });
    let (root, cwd) = (open("/".into())?, open(".".into())?);
    let mut files = Vec::new();
    for &(_, flag, name) in takeable() {
        files.push((open(format!("/proc/self/ns/{name}"))?, flag));
    }
    let flags = wanted(spec);
    if !flags.is_empty() {
        unshare(flags).map_err(|source| NamespacesError::Unshare {
            names: names(flags),
            source,
        })?;
    }
    if flags.contains(CloneFlags::CLONE_NEWNS) {
        // Mounts the host makes or removes later still reach this process (a client
        // unmounting the rootfs is not held up by a copy here), none go the other way.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(NamespacesError::Propagation)?;
    }
    Ok(HostNamespaces { files, root, cwd })
}

impl HostNamespaces {
    /// Makes `cmd`'s process enter the host's namespaces before it execs, with the root
    /// and working directory this process had there.
    pub fn apply_to(&self, cmd: &mut Command) -> std::io::Result<()> {
        let targets = self
            .files
            .iter()
            .map(|(f, flag)| Ok((f.try_clone()?, *flag)))
            .collect::<std::io::Result<Vec<(File, CloneFlags)>>>()?;
        let (root, cwd) = (self.root.try_clone()?, self.cwd.try_clone()?);
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it calls setns(2), fchdir(2) and
        // chroot(2) (with a path short enough for nix's stack buffer) on descriptors it
        // owns (moved into it, so open until `cmd` is dropped, and closed at exec),
        // reads a vector allocated before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for (file, flag) in &targets {
                    setns(file, *flag)?;
                }
                fchdir(&root)?;
                chroot(".")?;
                fchdir(&cwd)?;
                Ok(())
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(namespaces: serde_json::Value) -> Spec {
        let mut c = serde_json::to_value(Spec::default()).unwrap();
        c["linux"]["namespaces"] = namespaces;
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn only_new_namespaces_this_process_can_take_are_wanted() {
        let s = spec(serde_json::json!([
            {"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "uts"},
            {"type": "ipc", "path": "/proc/1/ns/ipc"}, {"type": "cgroup"}, {"type": "user"}
        ]));
        let flags = wanted(&s);
        assert_eq!(
            flags,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWCGROUP
        );
        assert_eq!(names(flags), "mnt, uts, cgroup");
        assert!(wanted(&spec(serde_json::json!([{"type": "network"}]))).is_empty());
    }
}
