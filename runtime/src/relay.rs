//! Relays a guest process's stdio to host file descriptors: one vsock stream per stdio
//! stream (see the protocol), one thread per direction. The host process learns that all
//! output arrived when the output streams reach EOF, which the agent sends only after
//! the process exited and its pipes drained.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use runm_protocol::{ProcessKey, Request, StreamKind};

use crate::agent_client::{AgentClient, AgentError};
use crate::console;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const RESIZE_POLL: Duration = Duration::from_millis(200);

/// The host side of a process's stdio.
#[derive(Debug)]
pub enum HostStdio {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A terminal: `input` read and `output` written (the same pty or our own
    /// terminal's stdin and stdout); `size` is polled for the window size.
    Tty {
        input: OwnedFd,
        output: OwnedFd,
        size: OwnedFd,
    },
}

impl HostStdio {
    /// This process's own stdin, stdout and stderr, as pipes (or files).
    pub fn inherited() -> std::io::Result<Self> {
        Ok(HostStdio::Pipes {
            stdin: Some(dup(std::io::stdin().as_fd())?),
            stdout: dup(std::io::stdout().as_fd())?,
            stderr: dup(std::io::stderr().as_fd())?,
        })
    }

    /// Our stdin and stdout, with the window size of the terminal `console`.
    pub fn own_terminal(console: OwnedFd) -> std::io::Result<Self> {
        Ok(HostStdio::Tty {
            input: dup(std::io::stdin().as_fd())?,
            output: dup(std::io::stdout().as_fd())?,
            size: console,
        })
    }

    /// A pty slave from [`console::send_to_socket`].
    pub fn pty(slave: OwnedFd) -> std::io::Result<Self> {
        Ok(HostStdio::Tty {
            input: slave.try_clone()?,
            output: slave.try_clone()?,
            size: slave,
        })
    }
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// Running relays; output is complete once [`Relay::wait_output`] returns true.
#[derive(Debug)]
pub struct Relay {
    done: Receiver<()>,
    outputs: usize,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Opens the process's streams on the agent behind `uds` and starts relaying. Call
    /// before the request that creates the process.
    pub fn attach(uds: &Path, key: &ProcessKey, stdio: HostStdio) -> Result<Self, AgentError> {
        let open = |kind| {
            AgentClient::connect(uds, runm_protocol::AGENT_PORT, ATTACH_TIMEOUT)?.attach_stream(
                key.clone(),
                kind,
                ATTACH_TIMEOUT,
            )
        };
        let (tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut outputs = 0;
        match stdio {
            HostStdio::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(stdin) = stdin {
                    let s = open(StreamKind::Stdin)?;
                    spawn("stdin", move || pump_in(File::from(stdin), s));
                }
                for (kind, fd) in [(StreamKind::Stdout, stdout), (StreamKind::Stderr, stderr)] {
                    let s = open(kind)?;
                    let tx = tx.clone();
                    outputs += 1;
                    spawn("output", move || {
                        pump_out(s, File::from(fd));
                        let _ = tx.send(());
                    });
                }
            }
            HostStdio::Tty {
                input,
                output,
                size,
            } => {
                let s = open(StreamKind::Tty)?;
                let s_in = s
                    .try_clone()
                    .map_err(|e| AgentError::Handshake(e.to_string()))?;
                spawn("tty-in", move || pump_in(File::from(input), s_in));
                let tx = tx.clone();
                outputs += 1;
                spawn("tty-out", move || {
                    pump_out(s, File::from(output));
                    let _ = tx.send(());
                });
                let uds = uds.to_path_buf();
                let key = key.clone();
                let stop = stop.clone();
                spawn("tty-size", move || poll_window_size(&uds, key, size, &stop));
            }
        }
        Ok(Self {
            done,
            outputs,
            stop,
        })
    }

    /// Waits until every output stream reached EOF, or `timeout`; true if they all did.
    pub fn wait_output(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.outputs > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done.recv_timeout(left) {
                Ok(()) => self.outputs -= 1,
                Err(_) => return false,
            }
        }
        true
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        log::error!("cannot start the {name} relay thread: {e}");
    }
}

/// Host input to the guest; the guest sees EOF when the host input ends.
fn pump_in(mut from: File, mut to: UnixStream) {
    if let Err(e) = std::io::copy(&mut from, &mut to) {
        log::debug!("stdin relay ended: {e}");
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Guest output to the host, until the guest closes the stream.
fn pump_out(mut from: UnixStream, mut to: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    // Nobody reads our output any more; keep draining the guest.
                    log::debug!("output relay: host side: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::debug!("output relay ended: {e}");
                break;
            }
        }
    }
}

/// Sends the host terminal's window size to the guest at start and on every change.
fn poll_window_size(uds: &Path, key: ProcessKey, tty: OwnedFd, stop: &AtomicBool) {
    let mut client: Option<AgentClient> = None;
    let mut last = None;
    while !stop.load(Ordering::Relaxed) {
        let size = console::window_size(tty.as_fd());
        if size.is_some() && size != last {
            let (rows, cols) = size.unwrap_or_default();
            if client.is_none() {
                client = AgentClient::connect(uds, runm_protocol::AGENT_PORT, ATTACH_TIMEOUT).ok();
            }
            let request = Request::ResizeTty {
                process: key.clone(),
                rows,
                cols,
            };
            match client.as_mut().map(|c| c.call_ok(&request, ATTACH_TIMEOUT)) {
                Some(Ok(())) => last = size,
                // Not created yet, or the connection broke: try again next round.
                Some(Err(e)) => {
                    log::debug!("resize: {e}");
                    if !matches!(e, AgentError::Refused(_)) {
                        client = None;
                    }
                }
                None => {}
            }
        }
        std::thread::sleep(RESIZE_POLL);
    }
}
