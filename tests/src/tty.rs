//! Terminals for the integration tests: a command run with its stdin a pty (its
//! controlling terminal or not), a pipe, `/dev/null` or closed; console-socket receivers
//! that read the pty master or never touch it; the same for runc and runm.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// runc, which the tests compare runm with.
pub const RUNC: &str = "/usr/sbin/runc";

/// An OCI runtime binary with a state root of its own.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub name: &'static str,
    pub bin: PathBuf,
    pub root: PathBuf,
}

impl Runtime {
    pub fn runc(root: PathBuf) -> Self {
        Self {
            name: "runc",
            bin: RUNC.into(),
            root,
        }
    }

    pub fn runm(root: PathBuf) -> Self {
        Self {
            name: "runm",
            bin: crate::runm_bin(),
            root,
        }
    }

    /// `BIN --root ROOT ARGS`, stdin /dev/null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).args(args);
        c.stdin(Stdio::null());
        c
    }

    /// The container's `status`, or None if the runtime does not know it.
    pub fn status(&self, id: &str) -> Option<String> {
        let out = crate::run_command(self.command(&["state", id]), Duration::from_secs(60), None);
        if !out.status.success() {
            return None;
        }
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        state["status"].as_str().map(str::to_string)
    }

    /// Kills and deletes the container, whatever state it is in.
    pub fn remove(&self, id: &str) {
        let t = Duration::from_secs(60);
        let _ = crate::run_command(self.command(&["kill", id, "KILL"]), t, None);
        let _ = crate::run_command(self.command(&["delete", "--force", id]), t, None);
    }
}

/// What a command's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdinKind {
    /// A pty slave that is the command's controlling terminal (it leads a new session),
    /// as in a terminal emulator.
    ControllingPty,
    /// A pty slave that is not its controlling terminal.
    Pty,
    /// A pipe that stays open and never gets a byte.
    Pipe,
    Null,
    /// No fd 0 at all.
    Closed,
}

pub const ALL_STDINS: [StdinKind; 5] = [
    StdinKind::ControllingPty,
    StdinKind::Pty,
    StdinKind::Pipe,
    StdinKind::Null,
    StdinKind::Closed,
];

/// Where a command's stdout goes: a pipe, or the pty of its stdin (a pty anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutKind {
    Pipe,
    Pty,
}

/// How a command ended: its exit status (None if it had to be killed at the deadline),
/// and all it wrote to stdout (pipe or pty) and stderr.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<i32>,
    pub output: String,
    pub stderr: String,
}

fn read_all(fd: OwnedFd) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(fd);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // A pty master reads EIO once every slave is closed: that is its end.
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&all).into_owned());
    });
    rx
}

/// Runs `cmd` with the given stdin and stdout (stderr a pipe) until it ends, or kills it
/// at `deadline`.
pub fn run_attached(
    mut cmd: Command,
    stdin: StdinKind,
    stdout: StdoutKind,
    deadline: Duration,
) -> Finished {
    let what = format!("{cmd:?} (stdin {stdin:?}, stdout {stdout:?})");
    let wants_pty =
        matches!(stdin, StdinKind::ControllingPty | StdinKind::Pty) || stdout == StdoutKind::Pty;
    let pty = wants_pty.then(|| nix::pty::openpty(None, None).expect("openpty"));
    let slave = || -> OwnedFd {
        let pty = pty.as_ref().expect("a pty");
        pty.slave.try_clone().expect("dup pty slave")
    };
    let mut pipe_writer = None;
    match stdin {
        StdinKind::ControllingPty => {
            cmd.stdin(slave());
            // SAFETY: setsid and ioctl are async-signal-safe and touch only the child.
            unsafe {
                cmd.pre_exec(|| {
                    nix::unistd::setsid()?;
                    if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        StdinKind::Pty => {
            cmd.stdin(slave());
        }
        StdinKind::Pipe => {
            let (r, w) = nix::unistd::pipe().expect("pipe");
            cmd.stdin(r);
            pipe_writer = Some(w);
        }
        StdinKind::Null => {
            cmd.stdin(Stdio::null());
        }
        StdinKind::Closed => {
            cmd.stdin(Stdio::null());
            // SAFETY: close is async-signal-safe; fd 0 is the child's own.
            unsafe {
                cmd.pre_exec(|| {
                    nix::libc::close(0);
                    Ok(())
                });
            }
        }
    }
    match stdout {
        StdoutKind::Pipe => cmd.stdout(Stdio::piped()),
        StdoutKind::Pty => cmd.stdout(slave()),
    };
    cmd.stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    // Our copies of the slave would keep the master from ever reading its end.
    drop(cmd);
    let (master, slave_copy) = match pty {
        Some(p) => (Some(p.master), Some(p.slave)),
        None => (None, None),
    };
    drop(slave_copy);
    let stdout_rx = match stdout {
        StdoutKind::Pipe => read_all(child.stdout.take().expect("stdout").into()),
        StdoutKind::Pty => read_all(master.expect("pty master")),
    };
    let stderr_rx = read_all(child.stderr.take().expect("stderr").into());
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code().or(Some(-1));
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(pipe_writer);
    let grace = Duration::from_secs(15);
    Finished {
        status,
        output: stdout_rx.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr_rx.recv_timeout(grace).unwrap_or_default(),
    }
}

/// What a console-socket receiver does with the pty master it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiverMode {
    /// Reads it to its end and keeps what it read (runc's `recvtty --mode null` reads
    /// it too, and throws it away). Never writes.
    Drain,
    /// Keeps it open and never reads or writes it.
    Hold,
}

/// A console socket and the receiver behind it: it takes every master sent to it.
#[derive(Debug)]
pub struct ConsoleSocket {
    pub path: PathBuf,
    seen: Arc<Mutex<Vec<u8>>>,
    held: Arc<Mutex<Vec<OwnedFd>>>,
}

impl ConsoleSocket {
    pub fn listen(path: &Path, mode: ReceiverMode) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the console socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (s, h) = (seen.clone(), held.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let Some(master) = receive_fd(&conn) else {
                    continue;
                };
                match mode {
                    ReceiverMode::Hold => h.lock().unwrap().push(master),
                    ReceiverMode::Drain => {
                        let s = s.clone();
                        std::thread::spawn(move || {
                            let mut f = std::fs::File::from(master);
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = f.read(&mut buf) {
                                if n == 0 {
                                    break;
                                }
                                s.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                        });
                    }
                }
            }
        });
        Self {
            path: path.to_path_buf(),
            seen,
            held,
        }
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// Waits until what was read from the masters contains `needle`, up to `deadline`;
    /// returns everything read.
    pub fn wait_for(&self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            let text = String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned();
            if text.contains(needle) || Instant::now() > end {
                return text;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many masters the receiver holds unread.
    pub fn held(&self) -> usize {
        self.held.lock().unwrap().len()
    }
}

/// The file descriptor a console socket's client sent over `conn` (SCM_RIGHTS).
pub fn receive_fd(conn: &std::os::unix::net::UnixStream) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let fd = msg.cmsgs().ok()?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    })?;
    // SAFETY: the fd just arrived over SCM_RIGHTS and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
