//! The foreground end of a container's terminal, as runc keeps it: `runm run` without
//! `--console-socket` takes the pty master from the container's host process over a
//! private console socket and relays it to its own stdin and stdout, in raw mode.
//!
//! The host process must never touch the caller's terminal itself: it lives in a process
//! group of its own, and a background process group that sets a terminal's modes or
//! reads it is stopped (SIGTTOU, SIGTTIN) when that terminal is the session's
//! controlling terminal, which left `runm run` hanging for ever.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::Duration;

use crate::console::{self, RawGuard};

const RESIZE_POLL: Duration = Duration::from_millis(200);

/// Relays a pty master to this process's stdin and stdout until the last slave closes.
/// Dropping it restores the terminal's modes.
#[derive(Debug)]
pub struct Foreground {
    output_done: Receiver<()>,
    stop: Arc<AtomicBool>,
    _raw: Option<RawGuard>,
}

impl Foreground {
    /// Relays `master` to our stdin and stdout; `console` (from
    /// [`console::host_console`]) is put in raw mode and gives the window size.
    pub fn start(master: OwnedFd, console: OwnedFd) -> std::io::Result<Self> {
        let raw = RawGuard::new(console.as_fd());
        // Input ends with our stdin (a pipe or /dev/null ends at once); the container's
        // terminal stays open, as under runc.
        if let Ok(input) = std::io::stdin().as_fd().try_clone_to_owned() {
            let to = File::from(master.try_clone()?);
            spawn("tty-in", move || copy_input(File::from(input), to));
        }
        let (tx, output_done) = mpsc::channel();
        let out = std::io::stdout().as_fd().try_clone_to_owned()?;
        let from = File::from(master.try_clone()?);
        spawn("tty-out", move || {
            copy_output(from, File::from(out));
            let _ = tx.send(());
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        spawn("tty-size", move || follow_size(&console, &master, &stopped));
        Ok(Self {
            output_done,
            stop,
            _raw: raw,
        })
    }

    /// Waits until the container's terminal has closed and its output is written out,
    /// or `timeout`; true if it has.
    pub fn wait_output(&self, timeout: Duration) -> bool {
        self.output_done.recv_timeout(timeout).is_ok()
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        log::error!("cannot start the {name} thread: {e}");
    }
}

fn copy_input(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Master to `to` until the master reads EOF or EIO (every slave closed). Once `to`
/// fails (nobody reads our output) the rest is drained, so the container never blocks.
fn copy_output(mut from: File, mut to: File) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sink_ok = true;
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if sink_ok && to.write_all(&buf[..n]).is_err() {
                    sink_ok = false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Gives the master our terminal's window size at start and on every change; the host
/// process passes the slave's size on to the guest.
fn follow_size(tty: &OwnedFd, master: &OwnedFd, stop: &AtomicBool) {
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let size = console::window_size(tty.as_fd());
        if let Some(size) = size.filter(|s| Some(*s) != last) {
            if let Err(e) = console::set_window_size(master.as_fd(), size) {
                log::debug!("resize: {e}");
            }
            last = Some(size);
        }
        std::thread::sleep(RESIZE_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_drained_after_the_sink_fails() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let writer = std::thread::spawn(move || {
            let mut slave = File::from(pty.slave);
            // More than a pty buffers: this blocks unless the master keeps being read.
            slave.write_all(&vec![b'x'; 1 << 20]).unwrap();
        });
        copy_output(File::from(pty.master), File::from(w));
        writer.join().unwrap();
    }
}
