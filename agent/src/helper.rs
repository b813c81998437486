//! libcontainer runs in a short-lived, single-threaded subprocess of the agent: the agent
//! re-executes itself (`/proc/self/exe`) with [`HELPER_ARG`], a JSON [`HelperOp`] and the
//! path of a result file.
//!
//! Why: libcontainer forks, and `waitpid`s its own intermediate process, while the
//! agent, as PID 1, reaps every child it has with one reaper. In the subprocess the
//! intermediate process is the subprocess's child, which the agent's reaper never sees;
//! the container's process, orphaned when the intermediate exits, is reparented to the
//! agent, which reaps it. Forking a multi-threaded process is also best avoided.
//!
//! The subprocess's stdin, stdout and stderr are the new process's stdio: the container's
//! processes inherit them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::reaper::Reaper;

/// The hidden first argument that makes `runm-agent` the helper subprocess.
pub const HELPER_ARG: &str = "__runm-helper";
/// libcontainer's state directory (one subdirectory per container).
pub const STATE_DIR: &str = "/run/runm/state";
/// Where helpers leave their results.
const RESULT_DIR: &str = "/run/runm/helper";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum HelperOp {
    /// Creates the container from the bundle's `config.json`; answers its init's pid.
    Create {
        id: String,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    Start {
        id: String,
    },
    /// Runs the process described by the OCI `process` JSON file; answers its pid.
    Exec {
        id: String,
        process: PathBuf,
        console_socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum HelperResult {
    Pid(i32),
    Done,
    Error(String),
}

impl HelperOp {
    /// How long the helper may take: a little less than the request it serves, so the
    /// host hears this error rather than the request's.
    fn limit(&self) -> Duration {
        let request = match self {
            HelperOp::Create { .. } => crate::deadline::CREATE,
            HelperOp::Start { .. } | HelperOp::Exec { .. } => crate::deadline::EXEC,
        };
        request.saturating_sub(Duration::from_secs(2))
    }
}

/// Runs `op` in a helper subprocess whose stdio is `stdio`; returns the pid it reports.
/// A helper that overruns its limit is killed: it is stuck on the container's files.
pub fn run(reaper: &Reaper, op: &HelperOp, stdio: [Stdio; 3]) -> Result<Option<i32>, String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(RESULT_DIR).map_err(|e| format!("cannot create {RESULT_DIR}: {e}"))?;
    let result =
        Path::new(RESULT_DIR).join(format!("{}.json", SEQ.fetch_add(1, Ordering::Relaxed)));
    let op_json = serde_json::to_string(op).map_err(|e| format!("helper request: {e}"))?;
    let [stdin, stdout, stderr] = stdio;
    let child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(op_json)
        .arg(&result)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .spawn()
        .map_err(|e| format!("cannot start the helper: {e}"))?;
    let pid = i32::try_from(child.id()).map_err(|_| "helper pid out of range".to_string())?;
    crate::debug::log(|| format!("helper {pid} started"));
    // The reaper, not `child.wait()`, collects it: PID 1 has one reaper.
    drop(child);
    let (tx, rx) = mpsc::channel();
    reaper.watch(pid, move |status| {
        let _ = tx.send(status);
    });
    let limit = op.limit();
    let status = match rx.recv_timeout(limit) {
        Ok(status) => status,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = std::fs::remove_file(&result);
            return Err(format!(
                "it did not finish within {limit:?}: the container's files do not answer \
                 (is its file server alive?)"
            ));
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err("lost the helper's exit status".into())
        }
    };
    let outcome = std::fs::read(&result);
    let _ = std::fs::remove_file(&result);
    match outcome.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
        Some(HelperResult::Pid(pid)) => Ok(Some(pid)),
        Some(HelperResult::Done) => Ok(None),
        Some(HelperResult::Error(e)) => Err(e),
        None => Err(format!(
            "the helper died (status {status}) without saying why"
        )),
    }
}

/// The helper subprocess's `main`: runs the op in `args` (JSON op, result path), writes
/// the result, and returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let [op, result] = args else {
        eprintln!("runm-agent: {HELPER_ARG} takes an operation and a result path");
        return 2;
    };
    crate::debug::init_tracing();
    crate::debug::log(|| format!("helper: {op}"));
    let outcome = match serde_json::from_str::<HelperOp>(op) {
        Ok(op) => match execute(op) {
            Ok(Some(pid)) => HelperResult::Pid(pid),
            Ok(None) => HelperResult::Done,
            Err(e) => HelperResult::Error(e),
        },
        Err(e) => HelperResult::Error(format!("bad helper request: {e}")),
    };
    crate::debug::log(|| format!("helper: {outcome:?}"));
    let failed = matches!(outcome, HelperResult::Error(_));
    let written = serde_json::to_vec(&outcome)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(result, b));
    match (written, failed) {
        (Err(e), _) => {
            eprintln!("runm-agent: cannot write {result}: {e}");
            1
        }
        (Ok(()), true) => 1,
        (Ok(()), false) => 0,
    }
}

fn execute(op: HelperOp) -> Result<Option<i32>, String> {
    match op {
        HelperOp::Create {
            id,
            bundle,
            console_socket,
        } => {
            let container = builder(&id)?
                .with_console_socket(console_socket)
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| error_chain(&e))?;
            let pid = container
                .pid()
                .ok_or("libcontainer reported no pid for the container")?;
            Ok(Some(pid.as_raw()))
        }
        HelperOp::Start { id } => {
            let mut container = Container::load(Path::new(STATE_DIR).join(&id))
                .map_err(|e| format!("cannot load container {id}: {}", error_chain(&e)))?;
            container.start().map_err(|e| error_chain(&e))?;
            Ok(None)
        }
        HelperOp::Exec {
            id,
            process,
            console_socket,
        } => {
            let terminal = console_socket.is_some();
            let pid = builder(&id)?
                .with_console_socket(console_socket)
                .as_tenant()
                .with_process(Some(process))
                .with_detach(terminal)
                .build()
                .map_err(|e| error_chain(&e))?;
            Ok(Some(pid.as_raw()))
        }
    }
}

fn builder(id: &str) -> Result<ContainerBuilder, String> {
    std::fs::create_dir_all(STATE_DIR).map_err(|e| format!("cannot create {STATE_DIR}: {e}"))?;
    ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(STATE_DIR)
        .map_err(|e| error_chain(&e))
}

/// An error and its sources, `: `-separated, without the repeats that transparent
/// wrappers make.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    in_runc_words(text)
}

/// libcontainer's words for a command that cannot be run, in runc's, which clients read:
/// Docker and podman exit 127 on "executable file not found" or "no such file or
/// directory", 126 on "permission denied".
fn in_runc_words(text: String) -> String {
    const EXE: &str = "executable '";
    const NOT_FOUND: &str = "' not found in $PATH";
    const NO_PERMISSION: &str = "does not have correct permissions";
    let Some(start) = text.find(EXE) else {
        return text;
    };
    let rest = &text[start + EXE.len()..];
    let (runc, after) = if let Some(end) = rest.find(NOT_FOUND) {
        let exe = &rest[..end];
        let runc = if exe.contains('/') {
            format!("exec: \"{exe}\": stat {exe}: no such file or directory")
        } else {
            format!("exec: \"{exe}\": executable file not found in $PATH")
        };
        (runc, &rest[end + NOT_FOUND.len()..])
    } else if let (Some(quote), Some(end)) = (rest.find('\''), rest.find(NO_PERMISSION)) {
        let runc = format!("exec: \"{}\": permission denied", &rest[..quote]);
        (runc, &rest[end + NO_PERMISSION.len()..])
    } else {
        return text;
    };
    format!("{}{runc}{after}", &text[..start])
}

/// Receives a terminal's master side, sent by the container over the console socket.
pub fn receive_console(listener: &std::os::unix::net::UnixListener) -> Result<Arc<File>, String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    listener
        .set_nonblocking(true)
        .map_err(|e| format!("console socket: {e}"))?;
    let (conn, _) = listener
        .accept()
        .map_err(|e| format!("the container sent no terminal: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| format!("cannot receive the terminal: {e}"))?;
    for c in msg
        .cmsgs()
        .map_err(|e| format!("cannot receive the terminal: {e}"))?
    {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just installed these fds in this process; nothing
                // else owns them.
                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                .collect();
            if let Some(master) = owned.pop() {
                return Ok(Arc::new(File::from(master)));
            }
        }
    }
    Err("the container's console message held no terminal".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Inner {
        #[error("no such file")]
        Io,
    }
    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error(transparent)]
        Transparent(#[from] Inner),
        #[error("cannot mount")]
        Wrapped(#[source] Inner),
    }

    #[test]
    fn commands_that_cannot_run_are_described_in_runc_words() {
        let said = |s: &str| in_runc_words(s.to_string());
        assert_eq!(
            said("failed: executable 'nope' not found in $PATH"),
            "failed: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(
            said("executable '/bin/nope' not found in $PATH"),
            "exec: \"/bin/nope\": stat /bin/nope: no such file or directory"
        );
        assert_eq!(
            said("executable 'x' at path '\"/bin/x\"' does not have correct permissions: end"),
            "exec: \"x\": permission denied: end"
        );
        assert_eq!(said("executable 'x' is fine"), "executable 'x' is fine");
        assert_eq!(said("other"), "other");
    }

    #[test]
    fn error_chains_skip_transparent_repeats() {
        assert_eq!(error_chain(&Outer::Transparent(Inner::Io)), "no such file");
        assert_eq!(
            error_chain(&Outer::Wrapped(Inner::Io)),
            "cannot mount: no such file"
        );
    }

    #[test]
    fn ops_round_trip() {
        let op = HelperOp::Exec {
            id: "c".into(),
            process: "/run/x.json".into(),
            console_socket: None,
        };
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.contains(r#""op":"exec""#), "{json}");
        assert!(matches!(
            serde_json::from_str(&json).unwrap(),
            HelperOp::Exec { .. }
        ));
    }
}
