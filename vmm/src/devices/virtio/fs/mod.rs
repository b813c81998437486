//! virtio-fs (virtio 1.2 §5.11) as a vhost-user frontend: the guest sees a virtio-fs
//! device, and a separate `virtiofsd` process serves the FUSE requests straight from the
//! queues in guest memory.
//!
//! Why a separate file server: virtiofsd confines itself to the shared directory with its
//! own sandbox (a mount namespace with pivot_root, seccomp), is maintained and audited,
//! and keeps file serving out of the VMM process. An in-VMM server (fuse-backend-rs)
//! would share the VMM's address space and its view of the host.
//!
//! What runs where:
//! - the VMM owns the virtio-mmio transport and the configuration space (tag, request
//!   queue count), and negotiates features with the driver;
//! - at DRIVER_OK it hands the backend the guest memory (a memfd, see
//!   [`crate::vstate::memory::Backing::SharedMemfd`]), the rings, the queue notify
//!   eventfds (the very eventfds KVM signals on a guest kick, so kicks go straight to
//!   virtiofsd) and one call eventfd per queue;
//! - the call eventfds stay with the VMM's device thread, which turns each into the
//!   used-buffer interrupt: the virtio-mmio driver ignores an interrupt whose
//!   InterruptStatus lacks the VRING bit, so the backend cannot have the irqfd itself.
//!
//! `vhost_user.rs` is the session with the backend (connection, feature and memory-table
//! messages), `device.rs` the virtio device, `event_handler.rs` the device-thread glue.
//! Nothing the backend says is trusted further than it must be: its features are
//! filtered through an allowlist, each of its replies waits at most [`BACKEND_TIMEOUT`],
//! and a backend that fails or goes away leaves the device broken (logged) but the VM
//! running.

pub mod device;
pub mod event_handler;
#[cfg(test)]
mod test_utils;
pub mod vhost_user;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Fs;

/// The longest tag (virtio 1.2 §5.11.4); shorter tags are NUL-padded.
pub const TAG_LEN: usize = 36;
/// Request queues besides the high-priority queue.
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Queue 0 is the high-priority queue, then the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES as usize;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// `struct virtio_fs_config`: the tag, then `num_request_queues` (le32).
pub const CONFIG_LEN: usize = TAG_LEN + 4;

/// How long the VMM keeps trying to connect to a backend that is not listening yet.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one message to or from the backend may take before the backend is given up.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Feature bits passed from the backend to the driver, when the backend offers them.
/// Everything else (vhost-user's own bits such as PROTOCOL_FEATURES and LOG_ALL, and
/// VIRTIO_FS_F_NOTIFICATION, which needs a queue we do not have) stays hidden.
pub const GUEST_FEATURES_ALLOWED: u64 = crate::devices::virtio::VIRTIO_F_VERSION_1
    | VIRTIO_RING_F_INDIRECT_DESC
    | crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// vhost-user only: the backend speaks protocol features (never shown to the guest).
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs {tag:?}: cannot connect to the vhost-user backend at {}: {source}", .socket.display())]
    Connect {
        tag: String,
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag:?}: the vhost-user backend at {} failed to {what}: {source}", .socket.display())]
    Backend {
        tag: String,
        socket: PathBuf,
        what: &'static str,
        source: vhost::Error,
    },
    #[error("virtio-fs {tag:?}: the vhost-user backend at {} did not {what} within {timeout:?}", .socket.display())]
    Timeout {
        tag: String,
        socket: PathBuf,
        what: &'static str,
        timeout: Duration,
    },
    #[error("virtio-fs {tag:?}: the vhost-user backend at {} {why}", .socket.display())]
    Unsuitable {
        tag: String,
        socket: PathBuf,
        why: String,
    },
    #[error("virtio-fs {tag:?}: cannot create the {what} eventfd: {source}")]
    EventFd {
        tag: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// One virtio-fs device: what the guest mounts (`mount -t virtiofs <tag> <dir>`) and the
/// vhost-user socket of the backend that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The mount tag, 1 to [`TAG_LEN`] bytes, unique within the VM.
    pub tag: String,
    /// Where the backend (virtiofsd `--socket-path`) listens. It must be listening, or
    /// start to within [`CONNECT_TIMEOUT`], when the VM is built.
    pub socket: PathBuf,
}
