//! Talks to the guest agent through the VMM's hybrid vsock: a Unix socket on which
//! `CONNECT <port>\n` opens a stream to a guest port and `OK <host port>\n` confirms it.
//! Everything the agent sends is checked: the guest is untrusted.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runm_protocol::{
    read_frame, write_frame, AgentInfo, FrameError, ProcessKey, Request, Response, StreamKind,
};

/// The handshake reply is short; anything longer is a misbehaving peer.
const MAX_HANDSHAKE_LINE: usize = 32;
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// For sending a request that has no deadline of its own.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot connect to the VM's vsock socket {}: {source}", .path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock handshake failed: {0}")]
    Handshake(String),
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("agent connection: {0}")]
    Frame(#[from] FrameError),
    #[error("the agent sent an invalid response: {0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("the guest stopped before its agent answered ({0})")]
    GuestStopped(String),
    #[error("the agent speaks protocol version {got}, runm needs {want}")]
    Version { got: u32, want: u32 },
}

/// A connection to the agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
}

impl AgentClient {
    /// Connects to guest `port`, retrying until `timeout` while the guest boots (before
    /// the agent listens, the connection is refused or reset).
    pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        Self::connect_while(uds, port, timeout, || Ok(()))
    }

    /// `connect`, giving up as soon as `alive` says the guest can no longer answer (a
    /// guest that crashed while booting should not cost the whole timeout).
    pub fn connect_while(
        uds: &Path,
        port: u32,
        timeout: Duration,
        mut alive: impl FnMut() -> Result<(), AgentError>,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            alive()?;
            match Self::try_connect(uds, port, deadline) {
                Ok(client) => return Ok(client),
                Err(e) if Instant::now() >= deadline => {
                    log::debug!("last connection attempt: {e}");
                    return Err(AgentError::Timeout(timeout));
                }
                Err(e) => log::trace!("agent not reachable yet: {e}"),
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
    }

    fn try_connect(uds: &Path, port: u32, deadline: Instant) -> Result<Self, AgentError> {
        let mut stream = vmm::uds::connect(uds).map_err(|source| AgentError::Connect {
            path: uds.to_path_buf(),
            source,
        })?;
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| AgentError::Handshake(e.to_string()))?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(|e| AgentError::Handshake(e.to_string()))?;
        let line = read_line(&mut stream)?;
        parse_ok(&line)?;
        Ok(Self { stream })
    }

    /// Sends one request and returns the validated response.
    pub fn call(&mut self, request: &Request, timeout: Duration) -> Result<Response, AgentError> {
        self.call_within(request, Some(timeout))
    }

    /// Sends a request whose answer may take as long as it takes (`Wait`).
    pub fn call_blocking(&mut self, request: &Request) -> Result<Response, AgentError> {
        self.call_within(request, None)
    }

    fn call_within(
        &mut self,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Response, AgentError> {
        self.stream
            .set_read_timeout(timeout)
            .and_then(|()| {
                // Even a wait's request must get out: the guest reads it at once or not
                // at all.
                self.stream
                    .set_write_timeout(Some(timeout.unwrap_or(WRITE_TIMEOUT)))
            })
            .map_err(|e| AgentError::Frame(e.into()))?;
        write_frame(&mut self.stream, request)?;
        let response: Response = read_frame(&mut self.stream).map_err(|e| match e {
            FrameError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                AgentError::Timeout(timeout.unwrap_or_default())
            }
            other => AgentError::Frame(other),
        })?;
        response.validate().map_err(AgentError::Invalid)?;
        if let Response::Error { message } = &response {
            return Err(AgentError::Refused(message.clone()));
        }
        Ok(response)
    }

    /// Makes this connection one stdio stream of `process` (see the protocol docs):
    /// once the agent has said yes, it carries raw bytes, so the socket is returned.
    pub fn attach_stream(
        mut self,
        process: ProcessKey,
        stream: StreamKind,
        timeout: Duration,
    ) -> Result<UnixStream, AgentError> {
        match self.call(&Request::AttachStream { process, stream }, timeout)? {
            Response::Ok => {}
            other => return Err(AgentError::Invalid(format!("expected ok, got {other:?}"))),
        }
        // A stdio stream waits on the process, which takes its time.
        self.stream
            .set_read_timeout(None)
            .and_then(|()| self.stream.set_write_timeout(None))
            .map_err(|e| AgentError::Frame(e.into()))?;
        Ok(self.stream)
    }

    /// Sends a request that is answered with `Ok`.
    pub fn call_ok(&mut self, request: &Request, timeout: Duration) -> Result<(), AgentError> {
        match self.call(request, timeout)? {
            Response::Ok => Ok(()),
            other => Err(AgentError::Invalid(format!("expected ok, got {other:?}"))),
        }
    }

    /// Asks the agent what it is, and checks that it speaks our protocol.
    pub fn ping(&mut self, timeout: Duration) -> Result<AgentInfo, AgentError> {
        match self.call(&Request::Ping, timeout)? {
            Response::Pong(info) if info.protocol_version == runm_protocol::PROTOCOL_VERSION => {
                Ok(info)
            }
            Response::Pong(info) => Err(AgentError::Version {
                got: info.protocol_version,
                want: runm_protocol::PROTOCOL_VERSION,
            }),
            other => Err(AgentError::Invalid(format!("expected pong, got {other:?}"))),
        }
    }

    /// Asks the agent to power the VM off.
    pub fn shutdown(&mut self, timeout: Duration) -> Result<(), AgentError> {
        self.call_ok(&Request::Shutdown, timeout)
    }
}

/// Reads one `\n`-terminated line, at most [`MAX_HANDSHAKE_LINE`] bytes.
fn read_line<R: Read>(r: &mut R) -> Result<String, AgentError> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) => return Err(AgentError::Handshake("connection closed".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_HANDSHAKE_LINE => {
                return Err(AgentError::Handshake("reply line too long".into()))
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(AgentError::Handshake(e.to_string())),
        }
    }
    String::from_utf8(line).map_err(|_| AgentError::Handshake("reply is not UTF-8".into()))
}

/// Accepts exactly `OK <port>`.
fn parse_ok(line: &str) -> Result<u32, AgentError> {
    line.strip_prefix("OK ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| AgentError::Handshake(format!("unexpected reply {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn handshake_reply_is_parsed_strictly() {
        assert_eq!(parse_ok("OK 1073741824").unwrap(), 1 << 30);
        for bad in ["OK", "OK x", "ok 1", "OK 1 2", "NO 5", ""] {
            assert!(parse_ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn handshake_line_is_bounded() {
        let long = vec![b'A'; 1000];
        let err = read_line(&mut long.as_slice()).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        assert_eq!(read_line(&mut b"OK 7\nrest".as_slice()).unwrap(), "OK 7");
    }

    /// A fake hybrid-vsock endpoint: accepts one connection, checks the CONNECT line,
    /// then plays `reply`.
    fn fake_vmm(dir: &Path, reply: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<()>) {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(&reply).unwrap();
            // Keep the stream open until the client is done.
            let _ = s.read(&mut [0u8; 1]);
        });
        (path, handle)
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("runm-agent-client-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn ping_through_a_fake_vmm() {
        let dir = temp_dir("ping");
        let mut reply = b"OK 1073741824\n".to_vec();
        write_frame(
            &mut reply,
            &Response::Pong(AgentInfo {
                agent_version: "0.1.0".into(),
                protocol_version: runm_protocol::PROTOCOL_VERSION,
                kernel: "6.12.117".into(),
            }),
        )
        .unwrap();
        let (path, vmm) = fake_vmm(&dir, reply);
        let mut client = AgentClient::connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let info = client.ping(Duration::from_secs(5)).unwrap();
        assert_eq!(info.kernel, "6.12.117");
        drop(client);
        vmm.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oversized_agent_text_is_rejected() {
        let dir = temp_dir("oversized");
        let mut reply = b"OK 5\n".to_vec();
        write_frame(
            &mut reply,
            &Response::Error {
                message: "x".repeat(runm_protocol::MAX_TEXT_LEN + 1),
            },
        )
        .unwrap();
        let (path, vmm) = fake_vmm(&dir, reply);
        let mut client = AgentClient::connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let err = client.ping(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, AgentError::Invalid(_)), "{err}");
        drop(client);
        vmm.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreachable_socket_times_out() {
        let err = AgentClient::connect(
            Path::new("/nonexistent/vsock.sock"),
            1024,
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(matches!(err, AgentError::Timeout(_)), "{err}");
    }

    #[test]
    fn a_guest_that_stops_ends_the_wait_before_the_timeout() {
        let mut checks = 0;
        let err = AgentClient::connect_while(
            Path::new("/nonexistent/vsock.sock"),
            1024,
            Duration::from_secs(60),
            || {
                checks += 1;
                if checks < 3 {
                    Ok(())
                } else {
                    Err(AgentError::GuestStopped("the guest reset itself".into()))
                }
            },
        )
        .unwrap_err();
        assert!(matches!(err, AgentError::GuestStopped(_)), "{err}");
        assert_eq!(checks, 3, "it gave up at the first check that failed");
    }
}
