//! What PID 1 does before anything else, and how it ends the VM.

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};
use nix::unistd::{dup2_stderr, dup2_stdin, dup2_stdout};
use std::fs::OpenOptions;

/// Pseudo filesystems every guest needs: (type, mount point).
const MOUNTS: [(&str, &str); 3] = [("proc", "/proc"), ("sysfs", "/sys"), ("devtmpfs", "/dev")];

#[derive(Debug)]
pub enum InitError {
    Mkdir(&'static str, std::io::Error),
    Mount(&'static str, nix::Error),
    Console(std::io::Error),
}

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mkdir(dir, e) => write!(f, "cannot create {dir}: {e}"),
            Self::Mount(dir, e) => write!(f, "cannot mount {dir}: {e}"),
            Self::Console(e) => write!(f, "cannot open /dev/console: {e}"),
        }
    }
}

/// Mounts /proc, /sys and /dev, and makes /dev/console our stdin, stdout and stderr
/// (the kernel cannot open it for us: /dev is empty until devtmpfs is mounted).
pub fn setup() -> Result<(), InitError> {
    for (fstype, dir) in MOUNTS {
        std::fs::create_dir_all(dir).map_err(|e| InitError::Mkdir(dir, e))?;
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
        match mount(Some(fstype), dir, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(e) => return Err(InitError::Mount(dir, e)),
        }
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
