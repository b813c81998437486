//! Deadlines on the agent's answers. A container's files may stop answering (its
//! virtio-fs server died, a bind-mounted source hangs), and a thread that touches them
//! then waits in the kernel for ever, out of reach of any signal. So each request but
//! `Wait` is worked on by a thread of its own, and the host gets an error when its
//! deadline passes: the agent goes on answering everything else.

use std::sync::mpsc;
use std::time::Duration;

use runm_protocol::Request;

/// Requests that only read the agent's own state or the cgroup files.
const QUICK: Duration = Duration::from_secs(10);
/// Starting a process reads the container's files (the binary, `/etc/passwd`, the cwd).
/// Generous: under nested emulation a healthy exec takes seconds.
pub const EXEC: Duration = Duration::from_secs(15);
/// Creating mounts and prepares the rootfs; it must still answer within the host's
/// 60 s, with the guest's words.
pub const CREATE: Duration = Duration::from_secs(50);

/// How long the host may wait for the answer to `request`; `None` for those whose answer
/// is an event that comes when it comes (`Wait`), or that never touch a container.
pub fn deadline(request: &Request) -> Option<Duration> {
    match request {
        Request::Wait { .. } | Request::Shutdown | Request::AttachStream { .. } => None,
        Request::CreateContainer { .. } => Some(CREATE),
        Request::StartContainer { .. } | Request::Exec { .. } => Some(EXEC),
        Request::Ping
        | Request::Signal { .. }
        | Request::ResizeTty { .. }
        | Request::SetTtyOnlcr { .. }
        | Request::Pause { .. }
        | Request::Resume { .. }
        | Request::Processes { .. }
        | Request::Stats { .. }
        | Request::AddInterface { .. } => Some(QUICK),
    }
}

/// The request's name as the protocol spells it, for an error message.
pub fn name(request: &Request) -> String {
    serde_json::to_value(request)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the request".into())
}

/// Runs `work` on a thread of its own and returns its result if it comes within
/// `limit`; else `None`, and the thread is left to finish (or hang) on its own.
pub fn run_within<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("request".into())
        .spawn(move || {
            let _ = tx.send(work());
        });
    if spawned.is_err() {
        return None;
    }
    rx.recv_timeout(limit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use runm_protocol::ProcessKey;

    #[test]
    fn waits_have_no_deadline_and_the_rest_do() {
        let wait = Request::Wait {
            process: ProcessKey::init("c"),
        };
        assert_eq!(deadline(&wait), None);
        assert_eq!(deadline(&Request::Ping), Some(QUICK));
        assert_eq!(name(&Request::Ping), "ping");
    }

    #[test]
    fn work_past_its_deadline_is_left_behind() {
        assert_eq!(run_within(Duration::from_secs(5), || 7), Some(7));
        let (tx, rx) = mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let hung = run_within(Duration::from_millis(100), move || rx.recv());
        assert_eq!(hung, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(tx);
    }
}
