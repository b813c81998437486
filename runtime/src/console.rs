//! Terminals on the host side of a `process.terminal` process.
//!
//! The real terminal is a pty in the guest. On the host, runm either makes a pty pair
//! and hands its master to the caller's `--console-socket` (SCM_RIGHTS, as runc does),
//! relaying the slave; or, run in the foreground without a socket, uses its own
//! terminal. Either host end is put in raw mode so bytes pass unchanged (the guest's
//! line discipline does the work). Window sizes are polled and sent to the guest.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::pty::{openpty, Winsize};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("cannot allocate a pty: {0}")]
    Openpty(nix::Error),
    #[error("console socket {}: {source}", .path.display())]
    Socket {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "process.terminal is true, but none of stdin, stdout and stderr is a terminal, \
         and there is no controlling terminal (/dev/tty: {0})"
    )]
    NoTerminal(std::io::Error),
    #[error("cannot receive the terminal's master: {0}")]
    Receive(std::io::Error),
    #[error("cannot set the terminal to raw mode: {0}")]
    Termios(nix::Error),
}

/// Makes a pty pair, sends the master to the console socket at `path`, returns the
/// slave (in raw mode) for the relay.
pub fn send_to_socket(path: &Path) -> Result<OwnedFd, ConsoleError> {
    let pty = openpty(None, None).map_err(ConsoleError::Openpty)?;
    make_raw(pty.slave.as_fd()).map_err(ConsoleError::Termios)?;
    let socket_err = |source: std::io::Error| ConsoleError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let sock = vmm::uds::connect(path).map_err(socket_err)?;
    let name = nix::unistd::ttyname(pty.slave.as_fd())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/dev/ptmx".into());
    let fds = [pty.master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| socket_err(e.into()))?;
    // The caller owns the master now; our copy closes here.
    Ok(pty.slave)
}

/// Receives a pty master sent to `listener` by [`send_to_socket`] (the peer has
/// connected and sent it before it reported ready, so nothing is waited for).
pub fn receive_master(listener: &UnixListener) -> Result<OwnedFd, ConsoleError> {
    let err = |source: std::io::Error| ConsoleError::Receive(source);
    listener.set_nonblocking(true).map_err(err)?;
    let (conn, _) = listener.accept().map_err(err)?;
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| err(e.into()))?;
    let fds: Vec<OwnedFd> = msg
        .cmsgs()
        .map_err(|e| err(e.into()))?
        .flat_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds,
            _ => Vec::new(),
        })
        // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing else
        // owns them.
        .map(|fd| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        .collect();
    fds.into_iter()
        .next()
        .ok_or_else(|| err(std::io::Error::other("the message held no terminal")))
}

/// The terminal a foreground `run` or `exec` relays a container's terminal through, as
/// runc finds it: the first of stderr, stdout and stdin that is a terminal, else the
/// controlling terminal (`/dev/tty`). Its modes and window size are the ones that count;
/// input still comes from stdin and output goes to stdout.
pub fn host_console() -> Result<OwnedFd, ConsoleError> {
    let stdio = [
        std::io::stderr().as_fd().try_clone_to_owned(),
        std::io::stdout().as_fd().try_clone_to_owned(),
        std::io::stdin().as_fd().try_clone_to_owned(),
    ];
    if let Some(fd) = stdio
        .into_iter()
        .flatten()
        .find(|fd| nix::unistd::isatty(fd).unwrap_or(false))
    {
        return Ok(fd);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map(OwnedFd::from)
        .map_err(ConsoleError::NoTerminal)
}

/// Puts `fd` in raw mode; returns the previous settings to restore.
pub fn make_raw(fd: BorrowedFd<'_>) -> nix::Result<Termios> {
    let saved = termios::tcgetattr(fd)?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
    Ok(saved)
}

/// Restores terminal settings saved by [`make_raw`] when dropped.
#[derive(Debug)]
pub struct RawGuard {
    fd: OwnedFd,
    saved: Termios,
}

impl RawGuard {
    /// Raw mode on our own terminal `fd` (if it is one) until dropped.
    pub fn new(fd: BorrowedFd<'_>) -> Option<Self> {
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            return None;
        }
        let owned = fd.try_clone_to_owned().ok()?;
        let saved = make_raw(fd).ok()?;
        Some(Self { fd: owned, saved })
    }
}

impl Drop for RawGuard {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

nix::ioctl_read_bad!(tiocgwinsz, nix::libc::TIOCGWINSZ, Winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, nix::libc::TIOCSWINSZ, Winsize);

/// Sets the window size of the terminal `fd`.
pub fn set_window_size(fd: BorrowedFd<'_>, (rows, cols): (u16, u16)) -> nix::Result<()> {
    let ws = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `struct winsize` from `ws`, which lives for the call.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }.map(drop)
}

/// The window size of the terminal `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    let mut ws = Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` into `ws`, which lives for the call.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }.ok()?;
    Some((ws.ws_row, ws.ws_col))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_arrives_over_the_console_socket() {
        let dir = std::env::temp_dir().join(format!("runm-console-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let slave = send_to_socket(&path).unwrap();
        let master = receive_master(&listener).unwrap();
        // Bytes written to the master come out of the slave unchanged (raw mode).
        nix::unistd::write(&master, b"a\rb").unwrap();
        let mut got = [0u8; 3];
        let n = nix::unistd::read(slave.as_fd(), &mut got).unwrap();
        assert_eq!(&got[..n], b"a\rb");
        // Resizing the master is what the slave's window size reports.
        set_window_size(master.as_fd(), (33, 101)).unwrap();
        assert_eq!(window_size(slave.as_fd()), Some((33, 101)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
