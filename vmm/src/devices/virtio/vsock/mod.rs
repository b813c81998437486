//! virtio-vsock (virtio 1.2 §5.10) as a "hybrid" device: the guest sees a vsock device, the
//! host sees Unix sockets, and the VMM carries the stream between them (Firecracker's design;
//! the host has no vhost-vsock).
//!
//! - The host reaches guest port P by connecting to `uds_path` and writing `CONNECT <P>\n`;
//!   the device picks a free host port H, sends the guest a REQUEST from (2, H), and answers
//!   `OK <H>\n` once the guest accepts. From then on the Unix stream carries the bytes.
//! - The guest reaches host port P (CID 2) through the Unix socket `<uds_path>_<P>`, which a
//!   host service listens on. Nothing listening there means a RST back to the guest.
//!
//! `device.rs` is the virtio side (config space, queues), `muxer.rs` routes packets between
//! the queues and the connections, `connection.rs` is one stream's state and credit
//! accounting, `drain.rs` keeps ended streams until their host has the guest's last bytes,
//! `event_handler.rs` the epoll glue. Packets are parsed by the `virtio-vsock`
//! crate; nothing from the guest is trusted: bad chains, CIDs or lengths are dropped with a
//! log line, protocol violations on a stream reset it.
//!
//! Nothing is buffered without bound: host-to-guest data stays in the Unix socket until the
//! guest has both an rx buffer and credit for it; guest-to-host data that the Unix socket
//! cannot take now is held up to the [`CONN_BUF_ALLOC`] we advertise, and a guest that sends
//! past its credit gets the stream reset.
//!
//! Guest bytes are never dropped silently: bytes held when a stream ends (the guest's RST,
//! our reset, a driver reset) still go to the host socket before it is closed, for up to
//! [`DRAIN_TIMEOUT`]; bytes that cannot be delivered (the host socket fails or never reads,
//! the VMM exits, a data packet for no stream) are logged at warn level with the reason.
//! A guest that powers off must still wait for its own bytes to leave it: Linux queues
//! vsock writes in the guest and drops that queue when it resets the device at shutdown.

mod connection;
mod device;
mod drain;
mod event_handler;
mod muxer;
#[cfg(test)]
pub(crate) mod test_utils;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Vsock;

/// Queue indices and sizes (virtio 1.2 §5.10.2).
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const EVQ_INDEX: usize = 2;
pub const NUM_QUEUES: usize = 3;
pub const QUEUE_SIZE: u16 = 256;

/// The host's address (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;

/// The only socket type we carry (VIRTIO_VSOCK_TYPE_STREAM).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (virtio 1.2 §5.10.6).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Largest payload of one packet either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a guest
/// packet claiming more is dropped.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Receive buffer we advertise per connection (buf_alloc): the most guest data we hold for a
/// host socket that is not reading.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// A CREDIT_UPDATE goes out once the guest believes it has less credit than this (half the
/// buffer: the guest keeps sending while the update is on its way).
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;
/// Streams at once, counting host connections still sending their `CONNECT` line.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest `CONNECT <port>\n` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;
/// RSTs waiting for rx buffers; past this they are dropped (with a log line).
pub const MAX_PENDING_RST: usize = 2 * MAX_CONNECTIONS;
/// Host ports for host-initiated streams are allocated counting up from here.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long the guest has to answer a host-initiated REQUEST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest has to answer our full SHUTDOWN with a RST before we reset.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stream that ended (closed, reset, or the device reset) keeps its host socket
/// while the host has not read the guest bytes we still hold for it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the builder configures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's address (3 or above).
    pub guest_cid: u32,
    /// Where the host side listens; guest connections to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved; use 3 or above (below u32::MAX)")]
    InvalidCid(u32),
    #[error("vsock socket {0} already exists")]
    SocketExists(PathBuf),
    #[error("cannot bind vsock socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create vsock eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot create vsock timer: {0}")]
    Timer(std::io::Error),
}
