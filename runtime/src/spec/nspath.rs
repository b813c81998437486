//! A namespace `path` in `linux.namespaces`. The spec: join it, and fail if it does not
//! exist or is of another type. In a microVM the guest cannot join a host namespace, so:
//! - `network`: the host process joins it (the VM mirrors its interfaces);
//! - a path naming another runm container's namespace (`/proc/PID/ns/TYPE` of its host
//!   process, as podman and containerd pass for containers that share namespaces): that
//!   container runs in another VM, so this one gets a namespace of its own, with a
//!   warning (one VM per pod is what lets them share it);
//! - anything else: refused, naming the field.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use oci_spec::runtime::LinuxNamespaceType;

use crate::namespaces::KINDS;

/// What a valid path means for the container.
#[derive(Debug, PartialEq, Eq)]
pub enum NsPath {
    /// A network namespace: the host process joins it.
    Join,
    /// The namespace of runm container host process `pid`.
    OtherContainer { pid: u32 },
}

// NS_GET_NSTYPE (linux/nsfs.h, `_IO(0xb7, 0x3)`): the CLONE_NEW* flag of the namespace
// an nsfs descriptor refers to; any other file answers ENOTTY.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// The kind of namespace the file at `path` is (`net`, `ipc`, ...), as `/proc/PID/ns`
/// names it: read from the file (a `/proc` link or a bind mount of one, such as
/// `/run/netns/NAME`), whatever it is called.
fn kind_of(path: &Path) -> Result<&'static str, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: NS_GET_NSTYPE takes no argument; it only looks at the descriptor, which
    // `file` keeps open for the call.
    let flag = unsafe { ns_get_nstype(file.as_raw_fd()) }.map_err(|e| match e {
        Errno::ENOTTY | Errno::EINVAL => format!(
            "{} is not a namespace (expected /proc/PID/ns/TYPE or a bind mount of one)",
            path.display()
        ),
        e => format!("{}: cannot read its namespace type: {e}", path.display()),
    })?;
    KINDS
        .iter()
        .find(|(_, f, _)| f.bits() == flag)
        .map(|(_, _, name)| *name)
        .ok_or_else(|| {
            format!(
                "{} is a namespace of an unknown type ({flag:#x})",
                path.display()
            )
        })
}

/// The process a `/proc/PID/ns/TYPE` (or `/proc/PID/task/TID/ns/TYPE`) path names.
fn proc_pid(path: &Path) -> Option<u32> {
    let parts: Vec<Component<'_>> = path.components().collect();
    let name = |i: usize| match parts.get(i) {
        Some(Component::Normal(n)) => n.to_str(),
        _ => None,
    };
    let rooted = matches!(parts.first(), Some(Component::RootDir));
    let ns_at = match parts.len() {
        5 => 3,
        7 if name(3) == Some("task") => 5,
        _ => return None,
    };
    if !rooted || name(1) != Some("proc") || name(ns_at) != Some("ns") {
        return None;
    }
    name(2)?.parse().ok()
}

/// Whether process `pid` runs this very runm binary (a container's host process).
fn is_runm(pid: u32) -> bool {
    let ident = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let theirs = ident(&format!("/proc/{pid}/exe"));
    theirs.is_some() && theirs == ident("/proc/self/exe")
}

/// The spelling `/proc/PID/ns/` uses for a namespace type.
fn nsfs_name(typ: LinuxNamespaceType) -> &'static str {
    KINDS
        .iter()
        .find(|(t, _, _)| *t == typ)
        .map_or("", |(_, _, name)| *name)
}

/// Checks the `path` of a namespace of type `typ`; `name` is how config.json spells it.
pub fn check(typ: LinuxNamespaceType, name: &str, path: &Path) -> Result<NsPath, String> {
    let kind = kind_of(path)?;
    if kind != nsfs_name(typ) {
        return Err(format!(
            "{} is a namespace of type {kind}, not {name}",
            path.display()
        ));
    }
    if typ == LinuxNamespaceType::Network {
        return Ok(NsPath::Join);
    }
    match proc_pid(path) {
        Some(pid) if is_runm(pid) => Ok(NsPath::OtherContainer { pid }),
        _ => Err(format!(
            "{} is a {name} namespace of the host: a microVM cannot join it (only a network \
             namespace, or the namespaces of another runm container, can be given by path)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_paths_name_their_process() {
        assert_eq!(proc_pid(Path::new("/proc/42/ns/ipc")), Some(42));
        assert_eq!(proc_pid(Path::new("/proc/42/task/43/ns/uts")), Some(42));
        assert_eq!(proc_pid(Path::new("/proc/self/ns/ipc")), None);
        assert_eq!(proc_pid(Path::new("/run/netns/x")), None);
        assert_eq!(proc_pid(Path::new("proc/42/ns/ipc")), None);
        assert_eq!(proc_pid(Path::new("/proc/42/ns")), None);
    }

    #[test]
    fn kinds_are_read_from_the_file_not_the_name() {
        assert_eq!(kind_of(Path::new("/proc/self/ns/net")).unwrap(), "net");
        assert_eq!(kind_of(Path::new("/proc/self/ns/ipc")).unwrap(), "ipc");
        let e = kind_of(Path::new("/proc/self/status")).unwrap_err();
        assert!(e.contains("not a namespace"), "{e}");
        assert!(kind_of(Path::new("/nonexistent/ns")).is_err());
    }

    #[test]
    fn another_type_a_host_namespace_and_a_runm_one() {
        let e = check(
            LinuxNamespaceType::Cgroup,
            "cgroup",
            Path::new("/proc/self/ns/ipc"),
        );
        assert!(e.unwrap_err().contains("of type ipc, not cgroup"));
        let net = check(
            LinuxNamespaceType::Network,
            "network",
            Path::new("/proc/self/ns/net"),
        );
        assert_eq!(net, Ok(NsPath::Join));
        // A process running another binary (cargo, the parent): the host's namespace.
        let parent = std::os::unix::process::parent_id();
        let e = check(
            LinuxNamespaceType::Ipc,
            "ipc",
            Path::new(&format!("/proc/{parent}/ns/ipc")),
        );
        assert!(e.unwrap_err().contains("of the host"));
        // A process running this very binary stands for another runm container.
        let me = std::process::id();
        let other = check(
            LinuxNamespaceType::Ipc,
            "ipc",
            Path::new(&format!("/proc/{me}/ns/ipc")),
        );
        assert_eq!(other, Ok(NsPath::OtherContainer { pid: me }));
    }
}
