//! What PID 1 does before anything else, and how it ends the VM.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};

/// Pseudo filesystems every guest needs: (type, mount point).
const MOUNTS: [(&str, &str); 3] = [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")];

/// What containers need besides: (type, mount point, flags, options).
const CONTAINER_MOUNTS: [(&str, &str, MsFlags, &str); 4] = [
    (
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    (
        "tmpfs",
        "/dev/shm",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
];

/// cgroup v2 controllers handed down to the containers' cgroups.
const CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "io", "cpuset"];

/// Set in the environment of the agent re-executed on its new root (see [`switch_root`]).
pub const SWITCHED_ENV: &str = "RUNM_ROOT_SWITCHED";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot create {0}: {1}")]
    Mkdir(String, std::io::Error),
    #[error("cannot mount {0}: {1}")]
    Mount(String, nix::Error),
    #[error("cannot open /dev/console: {0}")]
    Console(std::io::Error),
    #[error("cannot leave the initramfs: {0}")]
    SwitchRoot(String),
    #[error("cannot enable cgroup controllers: {0}")]
    Controllers(String),
}

/// Whether `dir` is a mount point already (it is on another device than its parent).
fn is_mount_point(dir: &str) -> bool {
    match (
        std::fs::metadata(dir),
        std::fs::metadata(Path::new(dir).join("..")),
    ) {
        (Ok(d), Ok(parent)) => d.dev() != parent.dev(),
        _ => false,
    }
}

fn mount_once(fstype: &str, dir: &str, flags: MsFlags, data: &str) -> Result<(), InitError> {
    if is_mount_point(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| InitError::Mkdir(dir.into(), e))?;
    let data = (!data.is_empty()).then_some(data);
    match mount(Some(fstype), dir, Some(fstype), flags, data) {
        Ok(()) | Err(nix::Error::EBUSY) => Ok(()),
        Err(e) => Err(InitError::Mount(dir.into(), e)),
    }
}

/// Mounts /proc, /sys and /dev, and makes /dev/console our stdin, stdout and stderr
/// (the kernel cannot open it for us: /dev is empty until devtmpfs is mounted).
/// Mount points already mounted are left as they are.
pub fn setup() -> Result<(), InitError> {
    for (fstype, dir) in MOUNTS {
        mount_once(fstype, dir, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, "")?;
    }
    let console = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(InitError::Console)?;
    let io = |e: nix::Error| InitError::Console(e.into());
    dup2_stdin(&console).map_err(io)?;
    dup2_stdout(&console).map_err(io)?;
    dup2_stderr(&console).map_err(io)
}

/// Mounts what containers need (/dev/pts, /dev/shm, /run, cgroup2) and enables the
/// cgroup controllers for the cgroups below the root.
pub fn setup_containers() -> Result<(), InitError> {
    for (fstype, dir, flags, data) in CONTAINER_MOUNTS {
        mount_once(fstype, dir, flags, data)?;
    }
    let control = "/sys/fs/cgroup/cgroup.subtree_control";
    let failed: Vec<String> = CONTROLLERS
        .iter()
        .filter_map(|c| {
            std::fs::write(control, format!("+{c}"))
                .err()
                .map(|e| format!("{c}: {e}"))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(InitError::Controllers(failed.join(", ")))
    }
}

/// The filesystem type of `/` in a mountinfo table (the last mount on `/` wins).
fn root_fstype(mountinfo: &str) -> Option<&str> {
    mountinfo
        .lines()
        .rev()
        .filter(|l| l.split_whitespace().nth(4) == Some("/"))
        .find_map(|l| l.split_once(" - ")?.1.split_whitespace().next())
}

/// Whether `/` is the initramfs (`rootfs`), which pivot_root cannot leave.
pub fn on_initramfs() -> bool {
    std::env::var_os(SWITCHED_ENV).is_none()
        && std::fs::read_to_string("/proc/self/mountinfo")
            .is_ok_and(|m| root_fstype(&m) == Some("rootfs"))
}

/// Moves the agent off the initramfs, as busybox `switch_root` does: a tmpfs gets a copy
/// of the agent, /proc, /sys and /dev move onto it, it is moved over `/`, and the agent
/// re-executes itself there (still PID 1, with [`SWITCHED_ENV`] set). Containers need
/// this: pivot_root cannot leave the initramfs. Returns only on failure.
pub fn switch_root() -> Result<Infallible, InitError> {
    const NEW_ROOT: &str = "/newroot";
    let fail =
        |what: &str, e: &dyn std::fmt::Display| InitError::SwitchRoot(format!("{what}: {e}"));
    mount_once("tmpfs", NEW_ROOT, MsFlags::empty(), "mode=0755")?;
    let init = format!("{NEW_ROOT}/init");
    std::fs::copy("/proc/self/exe", &init).map_err(|e| fail("copy the agent", &e))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail("chmod the agent", &e))?;
    for (_, dir) in MOUNTS {
        let target = format!("{NEW_ROOT}{dir}");
        std::fs::create_dir_all(&target).map_err(|e| InitError::Mkdir(target.clone(), e))?;
        mount(
            Some(dir),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|e| fail(&format!("move {dir}"), &e))?;
    }
    // The old root stays in memory under the new one; drop the agent's copy there.
    let _ = std::fs::remove_file("/init");
    nix::unistd::chdir(NEW_ROOT).map_err(|e| fail("chdir", &e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail("move the new root over /", &e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", &e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", &e))?;
    let path = CString::new("/init").map_err(|e| fail("path", &e))?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(CString::new(format!("{SWITCHED_ENV}=1")).map_err(|e| fail("env", &e))?);
    let err = match nix::unistd::execve(&path, &[&path], &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(fail("re-execute /init", &err))
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown: {e}"))
}

/// Ends the VM. The guest runs with `reboot=k`, so a restart resets the CPU through the
/// i8042, which the VMM takes as the guest's shutdown.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let err = match reboot(RebootMode::RB_AUTOBOOT) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    eprintln!("runm-agent: reboot failed: {err}");
    loop {
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_filesystem_type_is_found() {
        let initramfs = "1 1 0:2 / / rw - rootfs rootfs rw,size=1000k\n\
                         2 1 0:20 / /proc rw,nosuid - proc proc rw\n";
        assert_eq!(root_fstype(initramfs), Some("rootfs"));
        let switched = "1 1 0:2 / / rw - rootfs rootfs rw\n\
                        30 1 0:25 / / rw - tmpfs newroot rw,mode=755\n";
        assert_eq!(root_fstype(switched), Some("tmpfs"));
        assert_eq!(root_fstype(""), None);
    }

    #[test]
    fn mount_points_are_recognised() {
        assert!(is_mount_point("/proc"));
        assert!(!is_mount_point("/proc/self"));
        assert!(!is_mount_point("/nonexistent/dir"));
    }
}
