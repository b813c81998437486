//! Requests the host sends and the agent's responses.
//!
//! Control requests go over connections to [`crate::AGENT_PORT`], one response per
//! request. A process's stdio travels on connections of its own: the host opens one per
//! stream and sends [`Request::AttachStream`]; after the agent's `Ok` the connection
//! carries raw bytes. Streams are attached before the `CreateContainer` or `Exec` that
//! uses them; a stream the host did not attach is `/dev/null` in the guest.
//!
//! OCI documents (the container's config, an exec'd process) travel as JSON values: the
//! host validated them already, and the agent parses them with the OCI types it runs
//! them with.

use serde::{Deserialize, Serialize};

/// Longest free-text field the host accepts from the guest.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most processes the host accepts in one [`Response::Processes`].
pub const MAX_PROCESSES: usize = 4096;
/// Longest container or exec id either side accepts.
pub const MAX_ID_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the agent there, and what is it?
    Ping,
    /// Power the VM off (after replying).
    Shutdown,
    /// Makes this connection one stdio stream of a process that is about to be created.
    AttachStream {
        process: ProcessKey,
        stream: StreamKind,
    },
    /// Creates the container: rootfs mounted, namespaces, cgroups and mounts set up, the
    /// process waiting for [`Request::StartContainer`]. Answered with `Created`.
    CreateContainer {
        id: String,
        /// The OCI runtime config as the guest must apply it (host-only parts removed).
        spec: serde_json::Value,
        rootfs: Rootfs,
        /// The virtio-fs tag of the sandbox's shared directory, when it has one: the
        /// agent mounts it at [`crate::SHARED_DIR`] before it creates the container,
        /// whose shared rootfs and bind-mount sources lie there.
        shared_fs: Option<String>,
    },
    StartContainer {
        id: String,
    },
    /// Runs another process in the container (an OCI `process` object). Answered with
    /// `Created`; it runs at once.
    Exec {
        process: ProcessKey,
        spec: serde_json::Value,
    },
    /// Answered with `Exited` once the process has exited and its output streams are
    /// drained and closed; at once if it exited already.
    Wait {
        process: ProcessKey,
    },
    /// Sends `signal` to the process, or with `all` to every process of the container.
    Signal {
        process: ProcessKey,
        signal: i32,
        all: bool,
    },
    ResizeTty {
        process: ProcessKey,
        rows: u16,
        cols: u16,
    },
    /// Turns the terminal's `ONLCR` (newline to CRLF on output) on or off: runc turns it
    /// off when it relays a terminal to its own stdout.
    SetTtyOnlcr {
        process: ProcessKey,
        onlcr: bool,
    },
    /// Freezes every process of the container (cgroup freezer).
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Answered with `Processes`.
    Processes {
        id: String,
    },
    /// Answered with `Stats`.
    Stats {
        id: String,
    },
    /// Gives the container a network interface: the guest's virtio-net device whose MAC
    /// is `iface.device_mac` moves into the guest namespace the container's network
    /// namespace is, named, addressed and routed as the host interface it stands for,
    /// and up. Sent before `CreateContainer` for the interfaces the namespace had at
    /// boot, and at any time later for those that appear. Answered with `Ok`.
    AddInterface {
        iface: crate::Interface,
    },
}

/// A process the agent runs: a container's init (`exec` is `None`) or an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessKey {
    pub container: String,
    pub exec: Option<String>,
}

impl ProcessKey {
    pub fn init(container: &str) -> Self {
        Self {
            container: container.to_string(),
            exec: None,
        }
    }

    pub fn exec(container: &str, exec: &str) -> Self {
        Self {
            container: container.to_string(),
            exec: Some(exec.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// Both directions of the process's terminal (`process.terminal`).
    Tty,
}

/// Where the container's root filesystem comes from.
/// Whether `s` is a plain filesystem type name (`ext4`, `xfs`): what the host accepts
/// in its annotation and the agent in [`Rootfs::Block`], so no mount options ride along.
pub fn is_fstype_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rootfs {
    /// A virtio-blk disk, e.g. `/dev/vda`, holding a filesystem of `fstype`, or of a
    /// type the agent detects when `fstype` is `None`.
    Block {
        device: String,
        fstype: Option<String>,
        readonly: bool,
    },
    /// A directory of the shared file system: `path` is relative to
    /// [`crate::SHARED_DIR`]. It is shared writable even for a read-only root: the
    /// container's mount points are made in it first, as runc makes them on the host,
    /// then libcontainer remounts the root read-only (`root.readonly` in the spec).
    Shared { path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    Pong(AgentInfo),
    Ok,
    /// The process exists; `pid` is its pid in the guest.
    Created {
        pid: i32,
    },
    /// How the process ended, as a shell reports it: the exit code, or 128 + signal.
    Exited {
        status: i32,
    },
    Processes {
        processes: Vec<ProcessInfo>,
    },
    Stats(ContainerStats),
    Error {
        message: String,
    },
}

/// What the agent says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub agent_version: String,
    pub protocol_version: u32,
    /// The guest kernel's release (`uname -r`).
    pub kernel: String,
}

/// One process of a container, as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// The command line, arguments joined by spaces.
    pub cmd: String,
}

/// A container's resource usage, from its cgroup in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerStats {
    /// CPU time used, nanoseconds.
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// `None` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    pub pids_current: u64,
}

impl Response {
    /// Checks what a well-behaved agent would never send: over-long text, too many
    /// processes, impossible values. The host calls this on every response, since the
    /// guest is untrusted.
    pub fn validate(&self) -> Result<(), String> {
        let mut texts: Vec<(&str, &str)> = Vec::new();
        match self {
            Response::Pong(info) => {
                texts.push(("agent_version", &info.agent_version));
                texts.push(("kernel", &info.kernel));
            }
            Response::Ok | Response::Stats(_) => {}
            Response::Created { pid } if *pid <= 0 => {
                return Err(format!("agent reported an invalid pid {pid}"));
            }
            Response::Created { .. } => {}
            Response::Exited { status } if !(0..=255).contains(status) => {
                return Err(format!("agent reported an invalid exit status {status}"));
            }
            Response::Exited { .. } => {}
            Response::Processes { processes } => {
                if processes.len() > MAX_PROCESSES {
                    return Err(format!(
                        "agent listed {} processes, over the limit of {MAX_PROCESSES}",
                        processes.len()
                    ));
                }
                texts.extend(processes.iter().map(|p| ("cmd", p.cmd.as_str())));
            }
            Response::Error { message } => texts.push(("message", message)),
        }
        match texts.iter().find(|(_, t)| t.len() > MAX_TEXT_LEN) {
            Some((field, t)) => Err(format!(
                "agent response field `{field}` is {} bytes, over the {MAX_TEXT_LEN}-byte limit",
                t.len()
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_snake_case() {
        let json = serde_json::to_string(&Request::Ping).unwrap();
        assert_eq!(json, r#"{"type":"ping"}"#);
        let pong = Response::Pong(AgentInfo {
            agent_version: "0.1.0".into(),
            protocol_version: 1,
            kernel: "6.12.117".into(),
        });
        let json = serde_json::to_string(&pong).unwrap();
        assert_eq!(
            json,
            r#"{"type":"pong","agent_version":"0.1.0","protocol_version":1,"kernel":"6.12.117"}"#
        );
        let attach = Request::AttachStream {
            process: ProcessKey::exec("c1", "e1"),
            stream: StreamKind::Stdout,
        };
        assert_eq!(
            serde_json::to_string(&attach).unwrap(),
            r#"{"type":"attach_stream","process":{"container":"c1","exec":"e1"},"stream":"stdout"}"#
        );
    }

    #[test]
    fn every_request_round_trips() {
        let key = ProcessKey::init("c");
        let requests = [
            Request::Shutdown,
            Request::CreateContainer {
                id: "c".into(),
                spec: serde_json::json!({"ociVersion": "1.0.2"}),
                rootfs: Rootfs::Block {
                    device: "/dev/vda".into(),
                    fstype: Some("ext4".into()),
                    readonly: false,
                },
                shared_fs: None,
            },
            Request::CreateContainer {
                id: "c".into(),
                spec: serde_json::json!({"ociVersion": "1.0.2"}),
                rootfs: Rootfs::Shared {
                    path: "rootfs".into(),
                },
                shared_fs: Some("runm".into()),
            },
            Request::StartContainer { id: "c".into() },
            Request::Exec {
                process: ProcessKey::exec("c", "e"),
                spec: serde_json::json!({"args": ["sh"]}),
            },
            Request::Wait {
                process: key.clone(),
            },
            Request::Signal {
                process: key.clone(),
                signal: 9,
                all: true,
            },
            Request::ResizeTty {
                process: key.clone(),
                rows: 24,
                cols: 80,
            },
            Request::SetTtyOnlcr {
                process: key,
                onlcr: false,
            },
            Request::Pause { id: "c".into() },
            Request::Resume { id: "c".into() },
            Request::Processes { id: "c".into() },
            Request::Stats { id: "c".into() },
        ];
        for r in requests {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), r, "{json}");
        }
    }

    #[test]
    fn overlong_text_fails_validation() {
        let r = Response::Error {
            message: "x".repeat(MAX_TEXT_LEN + 1),
        };
        assert!(r.validate().unwrap_err().contains("`message`"));
        assert!(Response::Ok.validate().is_ok());
        let ps = Response::Processes {
            processes: vec![ProcessInfo {
                pid: 1,
                ppid: 0,
                uid: 0,
                cmd: "y".repeat(MAX_TEXT_LEN + 1),
            }],
        };
        assert!(ps.validate().unwrap_err().contains("`cmd`"));
    }

    #[test]
    fn impossible_values_fail_validation() {
        assert!(Response::Created { pid: 0 }.validate().is_err());
        assert!(Response::Created { pid: 7 }.validate().is_ok());
        assert!(Response::Exited { status: 256 }.validate().is_err());
        assert!(Response::Exited { status: -1 }.validate().is_err());
        assert!(Response::Exited { status: 137 }.validate().is_ok());
        let many = Response::Processes {
            processes: vec![
                ProcessInfo {
                    pid: 1,
                    ppid: 0,
                    uid: 0,
                    cmd: String::new(),
                };
                MAX_PROCESSES + 1
            ],
        };
        assert!(many.validate().is_err());
    }

    #[test]
    fn extra_fields_in_agent_info_are_rejected() {
        let r: Result<Response, _> = serde_json::from_str(
            r#"{"type":"pong","agent_version":"1","protocol_version":1,"kernel":"k","x":1}"#,
        );
        assert!(r.is_err());
    }
}
