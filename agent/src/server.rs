//! The agent's vsock server: one thread per host connection, one response per request.

use std::thread;

use nix::sys::socket::{setsockopt, sockopt};
use runm_protocol::{read_frame, write_frame, AgentInfo, FrameError, Request, Response};
use vsock::{VsockListener, VsockStream, VMADDR_CID_ANY};

use runm_agent::init;

#[derive(Debug)]
pub enum ServeError {
    Listen(u32, std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Listen(port, e) => write!(f, "cannot listen on vsock port {port}: {e}"),
        }
    }
}

/// Accepts host connections forever; returns only if the port cannot be listened on.
/// A `Shutdown` request powers the VM off from its connection's thread.
pub fn serve(port: u32) -> Result<(), ServeError> {
    let listener = VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port)
        .map_err(|e| ServeError::Listen(port, e))?;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle(stream))
                {
                    eprintln!("runm-agent: cannot start connection thread: {e}");
                }
            }
            Err(e) => eprintln!("runm-agent: accept failed: {e}"),
        }
    }
    Ok(())
}

fn handle(mut stream: VsockStream) {
    loop {
        let request = match read_frame::<_, Request>(&mut stream) {
            Ok(r) => r,
            Err(FrameError::Closed) => return,
            Err(e) => {
                // Say why, then drop the connection: framing may be lost.
                let message = format!("bad request: {e}");
                let _ = write_frame(&mut stream, &Response::Error { message });
                return;
            }
        };
        let shutdown = request == Request::Shutdown;
        let response = respond(request);
        if let Err(e) = write_frame(&mut stream, &response) {
            eprintln!("runm-agent: cannot reply: {e}");
            return;
        }
        if shutdown {
            close_delivered(stream);
            init::power_off();
        }
    }
}

/// How long closing the connection may wait for the host to have the last reply.
const REPLY_LINGER_SECS: i32 = 5;

/// Closes `stream` once the host has everything written to it. A vsock write returns when
/// the bytes are queued in this kernel, and the kernel drops that queue when it resets
/// the device at power-off: lingering makes close wait for the VMM's RST, which comes
/// only after the host took every byte.
fn close_delivered(stream: VsockStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: REPLY_LINGER_SECS,
    };
    if let Err(e) = setsockopt(&stream, sockopt::Linger, &linger) {
        eprintln!("runm-agent: SO_LINGER: {e}");
    }
    drop(stream);
}

fn respond(request: Request) -> Response {
    match request {
        Request::Ping => Response::Pong(AgentInfo {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: runm_protocol::PROTOCOL_VERSION,
            kernel: init::kernel_release(),
        }),
        Request::Shutdown => Response::Ok,
        other => Response::Error {
            message: format!("not supported yet: {other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_reports_versions() {
        let Response::Pong(info) = respond(Request::Ping) else {
            panic!("ping must be answered with pong");
        };
        assert_eq!(info.protocol_version, runm_protocol::PROTOCOL_VERSION);
        assert_eq!(info.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(!info.kernel.is_empty());
    }
}
