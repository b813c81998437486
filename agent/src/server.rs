//! The agent's vsock server: one thread per host connection, one response per request;
//! a connection that attaches a stream becomes that stream.

use std::sync::Arc;
use std::thread;

use runm_protocol::{
    read_frame, write_frame, FrameError, ProcessKey, Request, Response, StreamKind,
};
use vsock::{VsockListener, VsockStream, VMADDR_CID_ANY};

use runm_agent::agent::Agent;
use runm_agent::{deadline, init, relay};

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
pub fn serve(port: u32, agent: Arc<Agent>) -> Result<(), ServeError> {
    let listener = VsockListener::bind_with_cid_port(VMADDR_CID_ANY, port)
        .map_err(|e| ServeError::Listen(port, e))?;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let agent = Arc::clone(&agent);
                if let Err(e) = thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle(stream, agent))
                {
                    eprintln!("runm-agent: cannot start connection thread: {e}");
                }
            }
            Err(e) => eprintln!("runm-agent: accept failed: {e}"),
        }
    }
    Ok(())
}

fn handle(mut stream: VsockStream, agent: Arc<Agent>) {
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
        if let Request::AttachStream {
            process,
            stream: kind,
        } = request
        {
            attach(stream, &agent, process, kind);
            return;
        }
        let shutdown = request == Request::Shutdown;
        let response = answer(&agent, request);
        if let Err(e) = write_frame(&mut stream, &response) {
            eprintln!("runm-agent: cannot reply: {e}");
            return;
        }
        if shutdown {
            relay::close_delivered(stream);
            init::power_off();
        }
    }
}

/// The agent's answer to `request`, or an error once its deadline has passed.
fn answer(agent: &Arc<Agent>, request: Request) -> Response {
    let Some(limit) = deadline::deadline(&request) else {
        return agent.handle(request);
    };
    let name = deadline::name(&request);
    let agent = Arc::clone(agent);
    deadline::run_within(limit, move || agent.handle(request)).unwrap_or_else(|| {
        eprintln!("runm-agent: {name} did not finish within {limit:?}");
        Response::Error {
            message: format!(
                "the guest could not answer {name} within {limit:?}: something it needs \
                 (most likely the container's files) does not answer"
            ),
        }
    })
}

/// Makes the connection a process's stream. The stream is registered before the `Ok`
/// goes out, so that a `CreateContainer` or `Exec` sent after the `Ok` finds it; the `Ok`
/// goes out before any of the process's bytes, which flow only after that request.
fn attach(stream: VsockStream, agent: &Agent, process: ProcessKey, kind: StreamKind) {
    let mut reply_to = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            let message = format!("cannot attach the stream: {e}");
            let mut stream = stream;
            let _ = write_frame(&mut stream, &Response::Error { message });
            return;
        }
    };
    let response = match agent.attach(process, kind, stream) {
        Ok(()) => Response::Ok,
        Err(message) => Response::Error { message },
    };
    if let Err(e) = write_frame(&mut reply_to, &response) {
        eprintln!("runm-agent: cannot reply to attach_stream: {e}");
    }
}
