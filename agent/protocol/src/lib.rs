//! The wire protocol between the host (`runm`) and the guest agent, shared by both so
//! that there is one definition of every message.
//!
//! A connection carries frames: a 4-byte big-endian length, then that many bytes of JSON.
//! Each request gets exactly one response. Frames are capped at [`MAX_FRAME_LEN`], checked
//! before anything is allocated: the host treats the guest as untrusted.

mod framing;
mod messages;
mod network;

pub use framing::{read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use messages::{
    is_fstype_name, AgentInfo, ContainerStats, ProcessInfo, ProcessKey, Request, Response, Rootfs,
    StreamKind, MAX_ID_LEN, MAX_PROCESSES, MAX_TEXT_LEN,
};
pub use network::{
    format_mac, parse_cidr, parse_mac, DnsKind, Interface, Route, DNS_PORT, DOCKER_DNS,
    MAX_ADDRESSES, MAX_IFNAME_LEN,
};

/// Bumped on every incompatible change to the messages.
pub const PROTOCOL_VERSION: u32 = 5;
/// The vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Where the agent mounts the sandbox's shared file system (virtio-fs).
pub const SHARED_DIR: &str = "/run/runm/shared";
