//! Relays between a process's stdio (pipes or a terminal) and the host's vsock streams.
//!
//! Containers never get the vsock sockets themselves: programs open `/dev/stdout`, which
//! fails on a socket. Each output relay counts as open on its [`Proc`] until it has
//! drained its pipe and the host has every byte, so that `Wait` answers only then.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{setsockopt, sockopt};
use vsock::VsockStream;

use crate::process::Proc;

/// How long closing a stream may wait for the host to have the last bytes.
const LINGER_SECS: i32 = 10;
const BUF_LEN: usize = 64 * 1024;

/// Closes `stream` once the host has everything written to it. A vsock write returns when
/// the bytes are queued in this kernel, and the kernel drops that queue when it resets
/// the device at power-off: lingering makes close wait for the VMM's RST, which comes
/// only after the host took every byte.
pub fn close_delivered(stream: VsockStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: LINGER_SECS,
    };
    if let Err(e) = setsockopt(&stream, sockopt::Linger, &linger) {
        eprintln!("runm-agent: SO_LINGER: {e}");
    }
    drop(stream);
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        eprintln!("runm-agent: cannot start {name} relay: {e}");
    }
}

/// Copies `from` to `to` until `from` ends. Once `to` fails (the host closed it), the rest
/// is read and dropped, so the process never blocks on a full pipe. Calls `progress` after
/// each chunk.
pub fn copy_output(mut from: impl Read, mut to: impl Write, mut progress: impl FnMut()) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut sink_ok = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A terminal's master reads EIO once every slave is closed: that is its end.
            Err(_) => return,
        };
        if sink_ok && to.write_all(&buf[..n]).is_err() {
            sink_ok = false;
        }
        progress();
    }
}

/// Relays a process's stdout or stderr pipe (or a terminal nobody attached to) to the
/// host's stream, or to nowhere.
pub fn output(from: impl Read + Send + 'static, to: Option<VsockStream>, proc: Arc<Proc>) {
    proc.output_opened();
    spawn("output", move || {
        match &to {
            Some(stream) => copy_output(from, stream, || proc.output_progress()),
            None => copy_output(from, std::io::sink(), || proc.output_progress()),
        }
        if let Some(stream) = to {
            close_delivered(stream);
        }
        proc.output_closed();
    });
}

/// Relays the host's stream to a process's stdin pipe; the pipe closes when the host
/// closes (or shuts down) its side.
pub fn input(from: VsockStream, mut to: impl Write + Send + 'static) {
    spawn("input", move || {
        let _ = std::io::copy(&mut &from, &mut to);
    });
}

/// Relays both directions between a terminal's master side and the host's `Tty` stream,
/// in one thread (so that one owner closes the stream, once the output is drained).
pub fn tty(master: Arc<File>, stream: VsockStream, proc: Arc<Proc>) {
    proc.output_opened();
    spawn("tty", move || {
        tty_loop(&master, &stream, &proc);
        close_delivered(stream);
        proc.output_closed();
    });
}

fn tty_loop(master: &File, stream: &VsockStream, proc: &Proc) {
    let mut buf = vec![0u8; BUF_LEN];
    let mut input_open = true;
    let mut output_ok = true;
    loop {
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if input_open {
            fds.push(PollFd::new(stream.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("runm-agent: tty relay: poll: {e}");
                return;
            }
        }
        let ready = |fd: &PollFd| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let master_ready = ready(&fds[0]);
        let stream_ready = fds.get(1).is_some_and(ready);
        drop(fds);
        if master_ready {
            match (&*master).read(&mut buf) {
                Ok(0) | Err(_) => return, // EIO: every slave is closed
                Ok(n) => {
                    if output_ok && (&*stream).write_all(&buf[..n]).is_err() {
                        output_ok = false;
                    }
                    proc.output_progress();
                }
            }
        }
        if stream_ready {
            match (&*stream).read(&mut buf) {
                Ok(0) | Err(_) => input_open = false,
                Ok(n) => {
                    if (&*master).write_all(&buf[..n]).is_err() {
                        input_open = false;
                    }
                }
            }
        }
    }
}

/// Turns the terminal's newline-to-CRLF output mapping on or off (through the master: a
/// pty master's termios requests act on its slave).
pub fn set_onlcr(master: &File, onlcr: bool) -> nix::Result<()> {
    use nix::sys::termios::{self, OutputFlags, SetArg};
    let mut t = termios::tcgetattr(master.as_fd())?;
    t.output_flags.set(OutputFlags::ONLCR, onlcr);
    termios::tcsetattr(master.as_fd(), SetArg::TCSANOW, &t)
}

/// Sets the terminal's window size.
pub fn resize(master: &File, rows: u16, cols: u16) -> std::io::Result<()> {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points to a live,
    // initialised local; the fd is owned by `master` and open for the call's duration.
    let rc = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_is_copied_and_progress_counted() {
        let data = vec![7u8; BUF_LEN * 2 + 5];
        let mut out = Vec::new();
        let mut chunks = 0;
        copy_output(data.as_slice(), &mut out, || chunks += 1);
        assert_eq!(out, data);
        assert!(chunks >= 3);
    }

    #[test]
    fn a_closed_host_stream_still_drains_the_pipe() {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        let (reader, mut writer) = (File::from(reader), File::from(writer));
        let writer = std::thread::spawn(move || {
            // More than a pipe holds: this blocks unless the relay keeps reading.
            writer.write_all(&vec![1u8; 1 << 20]).unwrap();
        });
        copy_output(reader, Failing, || {});
        writer.join().unwrap();
    }
}
