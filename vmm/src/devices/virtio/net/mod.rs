//! virtio-net (virtio 1.2 §5.1) backed by a Linux tap device, which may be attached late.
//!
//! - `tap.rs` opens the tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte
//!   `virtio_net_hdr_v1`), so the virtio-net header travels between the guest and the host
//!   kernel unchanged: checksum and segmentation offloads cost the VMM nothing.
//! - `frame.rs` turns descriptor chains into frames and back, knowing nothing of taps or
//!   event loops: a tx chain becomes checked guest slices for one `writev`; an rx frame is
//!   spread over one chain, or several with `VIRTIO_NET_F_MRG_RXBUF`.
//! - `device.rs` is the virtio device (features, configuration space, activation, the rx
//!   and tx paths); `event_handler.rs` the glue to the VM's device thread.
//! - `vhost.rs` is the other data path, chosen per device ([`NetBackend::Vhost`]): the
//!   host kernel's vhost-net serves the queues and the tap, guest notifications go from
//!   KVM straight to it (ioeventfds) and its interrupts straight to the guest (the
//!   irqfd). The VMM only sets it up at activation, gives it a late tap, and stops it
//!   at a reset; the traffic counters stay at zero.
//!
//! Late attachment: virtio-mmio has no hotplug, so a VM gets its network devices at boot,
//! and a device may run without a tap until the host has one (Docker configures a
//! container's network after `start`). Without a tap the link is down, tx frames are
//! dropped (the queue still drains, so the guest never stalls) and nothing is received.
//! [`NetAttacher::attach`] hands a tap to a running VM's device from any thread: the link
//! goes up and the driver hears of it through a configuration-change interrupt.
//!
//! Back-pressure: the tap is registered edge-triggered. rx reads it until `EAGAIN`, or
//! until the guest has no rx buffers left; then the frame read is held, and the device
//! waits for the driver's next rx notification instead of spinning on a readable tap. A tx
//! write that would block leaves the chain in the queue until the tap is writable again.

pub mod device;
pub mod event_handler;
mod frame;
pub mod tap;
#[cfg(test)]
mod test_utils;
pub mod vhost;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};

pub use device::Net;
pub use tap::Tap;

/// Queue indices and sizes (virtio 1.2 §5.1.2): one receive and one transmit queue.
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const NUM_QUEUES: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// `struct virtio_net_hdr_v1` (with `num_buffers`): the header of every frame both ways,
/// and the tap's vnet header size.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// An Ethernet header; a shorter frame is not a frame.
pub const ETH_HLEN: usize = 14;
/// The longest frame either way, header excluded: a 64 KiB GSO packet behind an Ethernet
/// header with a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_535 + ETH_HLEN + 4;
/// The longest rx or tx buffer: header and frame.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Feature bits (virtio 1.2 §5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// The `status` bit of the configuration space.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Offloads of the tap (`TUNSETOFFLOAD`, `linux/if_tun.h`): what the tap may hand us, so
/// what the guest said it can receive.
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;
pub const TUN_F_UFO: u32 = 0x10;

/// The tap offloads that match the guest features the driver accepted. The kernel takes
/// segmentation offloads only with checksum offload, so without `GUEST_CSUM` there are
/// none.
pub fn tun_offload_flags(acked_features: u64) -> u32 {
    if acked_features & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    [
        (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ]
    .into_iter()
    .filter(|&(feature, _)| acked_features & feature != 0)
    .fold(TUN_F_CSUM, |flags, (_, flag)| flags | flag)
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("tap name {name:?} {why}")]
    TapName { name: String, why: &'static str },
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("tap {name:?}: {what} failed: {source}")]
    TapIoctl {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("virtio-net {index}: cannot create the {what} eventfd: {source}")]
    EventFd {
        index: usize,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("no virtio-net device {index}: the VM has {count}")]
    NoSuchDevice { index: usize, count: usize },
    #[error("virtio-net {index} already has tap {tap:?}")]
    AlreadyAttached { index: usize, tap: String },
    #[error("virtio-net {index}: the VM is gone")]
    VmGone { index: usize },
    #[error("virtio-net {index}: cannot open {path} for the vhost-net backend (is the vhost_net module loaded?): {source}")]
    VhostOpen {
        index: usize,
        path: &'static str,
        source: std::io::Error,
    },
    #[error("virtio-net {index}: vhost-net {what} failed: {source}")]
    Vhost {
        index: usize,
        what: &'static str,
        source: ::vhost::Error,
    },
    #[error("virtio-net {index}: vhost-net {why}")]
    VhostUnsuitable { index: usize, why: String },
}

/// What moves frames between the guest's queues and the tap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetBackend {
    /// The VMM's device thread (`device.rs`): reads and writes the tap itself.
    #[default]
    Userspace,
    /// The host kernel's vhost-net (`vhost.rs`): a kernel worker serves the rings and the
    /// tap; guest notifications and interrupts bypass the VMM. Needs `/dev/vhost-net`.
    Vhost,
}

/// One virtio-net device.
#[derive(Debug)]
pub struct NetConfig {
    /// The guest's MAC address: unicast, and unique within the VM.
    pub mac: [u8; 6],
    /// The tap behind the device; `None` starts it with its link down until
    /// [`NetAttacher::attach`] gives it one.
    pub tap: Option<Tap>,
    /// The data path. [`NetBackend::Vhost`] makes `start_microvm` fail when
    /// `/dev/vhost-net` cannot be opened; there is no fallback.
    pub backend: NetBackend,
}

/// Attaches taps to a running VM's virtio-net devices, from any thread. It does not keep
/// the VM (or its taps) alive.
#[derive(Debug, Clone, Default)]
pub struct NetAttacher {
    pub(crate) devices: Vec<Weak<Mutex<Net>>>,
}

impl NetAttacher {
    /// Gives `tap` to virtio-net device `index` (the index in `VmConfig::net`): the link
    /// goes up, and the driver, if it runs, gets a configuration-change interrupt. On an
    /// error the tap is dropped, which removes it.
    pub fn attach(&self, index: usize, tap: Tap) -> Result<(), NetError> {
        let device = self.devices.get(index).ok_or(NetError::NoSuchDevice {
            index,
            count: self.devices.len(),
        })?;
        let device = device.upgrade().ok_or(NetError::VmGone { index })?;
        let mut device = device.lock().unwrap_or_else(|e| e.into_inner());
        device.attach(tap)
    }

    /// How many virtio-net devices the VM has.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

/// A device's traffic counters, updated on the device thread and readable from any.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames (and their bytes, headers excluded) given to the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the tap that never reached the guest: too long for its buffers, a bad
    /// rx chain, a driver reset while one was held.
    pub rx_dropped: AtomicU64,
    /// Frames (and bytes, headers excluded) written to the tap.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest frames that never reached the tap: no tap, a malformed chain, a write error.
    pub tx_dropped: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{{\"rx_frames\":{},\"rx_bytes\":{},\"rx_dropped\":{},\"tx_frames\":{},\"tx_bytes\":{},\"tx_dropped\":{}}}",
            get(&self.rx_frames),
            get(&self.rx_bytes),
            get(&self.rx_dropped),
            get(&self.tx_frames),
            get(&self.tx_bytes),
            get(&self.tx_dropped),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_offloads_become_tap_offloads() {
        assert_eq!(tun_offload_flags(0), 0);
        // Host offloads are the guest sending: nothing for the tap to know.
        let host = VIRTIO_NET_F_CSUM
            | VIRTIO_NET_F_HOST_TSO4
            | VIRTIO_NET_F_HOST_TSO6
            | VIRTIO_NET_F_HOST_UFO;
        assert_eq!(tun_offload_flags(host), 0);
        assert_eq!(tun_offload_flags(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(
            tun_offload_flags(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4),
            TUN_F_CSUM | TUN_F_TSO4
        );
        let all = VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_GUEST_UFO;
        assert_eq!(
            tun_offload_flags(all | host),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
        );
        // The kernel refuses segmentation without checksums: so do we.
        assert_eq!(
            tun_offload_flags(VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_UFO),
            0
        );
    }

    #[test]
    fn attaching_to_a_device_that_is_not_there_says_so() {
        let attacher = NetAttacher::default();
        let (tap, _peer) = test_utils::fake_tap();
        let err = attacher.attach(0, tap).unwrap_err();
        assert!(matches!(err, NetError::NoSuchDevice { index: 0, count: 0 }));
        assert_eq!(err.to_string(), "no virtio-net device 0: the VM has 0");
    }

    #[test]
    fn the_attacher_and_the_tap_go_to_other_threads() {
        fn sendable<T: Send + Sync + Clone + std::fmt::Debug>() {}
        fn movable<T: Send + std::fmt::Debug>() {}
        sendable::<NetAttacher>();
        movable::<Tap>();
        movable::<NetConfig>();
    }

    #[test]
    fn metrics_dump_as_json() {
        let m = NetMetrics::default();
        NetMetrics::add(&m.rx_frames, 2);
        NetMetrics::add(&m.tx_bytes, 60);
        assert_eq!(
            m.to_json(),
            "{\"rx_frames\":2,\"rx_bytes\":0,\"rx_dropped\":0,\"tx_frames\":0,\"tx_bytes\":60,\"tx_dropped\":0}"
        );
    }
}
