//! The virtio-net device: features, configuration space (MAC and link status),
//! activation, tap attachment, and the rx and tx paths between its queues and the tap.
//! With [`NetBackend::Vhost`], activation, attachment and reset go to `vhost.rs`
//! instead, and the rx and tx paths here stay idle: the kernel serves the queues.

use std::io::ErrorKind;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::frame::{self, RxOutcome};
use super::vhost::{self, Vhost};
use super::{
    tun_offload_flags, NetBackend, NetConfig, NetError, NetMetrics, Tap, MAX_BUFFER_LEN,
    NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, VNET_HDR_LEN,
};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, Interrupt, VirtioDevice, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX,
};

/// `struct virtio_net_config` up to `status` (virtio 1.2 §5.1.4): the MAC, then the
/// link status (le16).
pub const CONFIG_LEN: usize = 8;

/// Everything offered: the MAC and link status, merged rx buffers, and checksum and
/// segmentation offloads both ways (the tap does the work).
pub const AVAIL_FEATURES: u64 = VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_RING_F_EVENT_IDX;

/// Tap read errors (other than `EAGAIN`) in one rx pass after which rx waits for the next
/// frame or rx notification.
const MAX_READ_ERRORS: u32 = 16;

/// What the device holds between activation and reset.
#[derive(Debug)]
pub(super) struct Active {
    mem: GuestMemoryMmap,
    pub(super) queues: Vec<ActiveQueue>,
    interrupt: Arc<Interrupt>,
    /// Whether the queue eventfds are registered with the event loop yet.
    pub(super) registered: bool,
}

impl Active {
    /// Interrupts the driver if the queue's notification suppression allows it.
    fn signal_used(&mut self, index: usize, dev: usize) {
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        match q.queue.needs_notification(&self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    log::warn!("virtio-net {dev}: cannot signal queue {index}: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("virtio-net {dev}: queue {index}: {e}"),
        }
    }
}

/// A virtio-net device, with or without its tap.
pub struct Net {
    index: usize,
    mac: [u8; 6],
    pub(super) tap: Option<Tap>,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// Written on activation, reset and tap attachment, for the device thread to
    /// (un)register the queue eventfds and the tap.
    pub(super) update_evt: EventFd,
    /// Queue eventfds of a driver that reset the device, registered until the device
    /// thread removes them.
    pub(super) stale_notify: Vec<EventFd>,
    /// Whether the event loop watches the tap.
    pub(super) tap_registered: bool,
    /// A frame read from the tap that the guest has no room for yet: `rx_buf[..len]`.
    rx_buf: Vec<u8>,
    rx_held: Option<usize>,
    /// A tx write would have blocked: the chain waits in the queue for the tap.
    pub(super) tx_blocked: bool,
    /// The tap offloads last set (`TUN_F_*`).
    offload: u32,
    metrics: Arc<NetMetrics>,
    /// The kernel data path, with [`NetBackend::Vhost`].
    pub(super) vhost: Option<Vhost>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("index", &self.index)
            .field("mac", &self.mac)
            .field("tap", &self.tap.as_ref().map(Tap::name))
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Device `index` (for logs and [`super::NetAttacher`]) with `config`'s MAC, tap and
    /// backend, over the VM's memory `mem`. With [`NetBackend::Vhost`], this opens
    /// `/dev/vhost-net`, and fails if it cannot.
    pub fn new(index: usize, config: NetConfig, mem: &GuestMemoryMmap) -> Result<Self, NetError> {
        let vhost = match config.backend {
            NetBackend::Userspace => None,
            NetBackend::Vhost => Some(Vhost::open(index, mem, Box::new(vhost::open_kernel))?),
        };
        Self::with_vhost(index, config, vhost)
    }

    /// [`Net::new`] with the vhost-net side given (a fake, in tests).
    pub(super) fn with_vhost(
        index: usize,
        config: NetConfig,
        vhost: Option<Vhost>,
    ) -> Result<Self, NetError> {
        let update_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| NetError::EventFd {
            index,
            what: "update",
            source,
        })?;
        if let Some(tap) = &config.tap {
            log::debug!("virtio-net {index}: tap {}", tap.name());
        }
        Ok(Self {
            index,
            mac: config.mac,
            tap: config.tap,
            acked_features: 0,
            active: None,
            update_evt,
            stale_notify: Vec::new(),
            tap_registered: false,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_held: None,
            tx_blocked: false,
            offload: 0,
            metrics: Arc::new(NetMetrics::default()),
            vhost,
        })
    }

    pub fn index(&self) -> usize {
        self.index
    }

    pub fn tap(&self) -> Option<&Tap> {
        self.tap.as_ref()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some() || self.vhost.as_ref().is_some_and(Vhost::is_running)
    }

    /// The data path.
    pub fn backend(&self) -> NetBackend {
        match self.vhost {
            Some(_) => NetBackend::Vhost,
            None => NetBackend::Userspace,
        }
    }

    /// The interrupt of the running driver, if any.
    fn interrupt(&self) -> Option<&Arc<Interrupt>> {
        match &self.active {
            Some(active) => Some(&active.interrupt),
            None => self.vhost.as_ref().and_then(Vhost::interrupt),
        }
    }

    /// Whether the guest sees its link up: while it has a tap.
    pub fn link_up(&self) -> bool {
        self.tap.is_some()
    }

    /// The tap offloads (`TUN_F_*`) last set from the driver's features.
    pub fn offload(&self) -> u32 {
        self.offload
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The configuration space (virtio 1.2 §5.1.4), little-endian.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link_up() {
            VIRTIO_NET_S_LINK_UP
        } else {
            0
        };
        c[6..].copy_from_slice(&status.to_le_bytes());
        c
    }

    /// Gives the device its tap: the link goes up, a running driver gets a
    /// configuration-change interrupt, and the device thread starts serving the tap.
    pub fn attach(&mut self, tap: Tap) -> Result<(), NetError> {
        if let Some(current) = &self.tap {
            return Err(NetError::AlreadyAttached {
                index: self.index,
                tap: current.name().to_owned(),
            });
        }
        log::debug!("virtio-net {}: tap {} attached", self.index, tap.name());
        self.tap = Some(tap);
        if self.is_activated() {
            self.apply_offload();
        }
        if let (Some(vhost), Some(tap)) = (self.vhost.as_mut(), self.tap.as_ref()) {
            if let Err(e) = vhost.attach(tap) {
                // The tap goes (dropped, it is removed); the link stays down.
                self.tap = None;
                self.offload = 0;
                return Err(e);
            }
        }
        if let Some(interrupt) = self.interrupt() {
            if let Err(e) = interrupt.signal_config_change() {
                log::warn!(
                    "virtio-net {}: cannot signal the link change: {e}",
                    self.index
                );
            }
        }
        self.wake_event_loop();
        Ok(())
    }

    fn wake_event_loop(&self) {
        if let Err(e) = self.update_evt.write(1) {
            log::error!(
                "virtio-net {}: cannot wake the device thread: {e}",
                self.index
            );
        }
    }

    /// Tells the tap which offloads the guest takes (none before activation or after a
    /// reset).
    fn apply_offload(&mut self) {
        let flags = if self.is_activated() {
            tun_offload_flags(self.acked_features)
        } else {
            0
        };
        let Some(tap) = &self.tap else {
            return;
        };
        match tap.set_offload(flags) {
            Ok(()) => log::debug!("virtio-net {}: tap offloads {flags:#x}", self.index),
            Err(e) => log::warn!("virtio-net {}: {e}", self.index),
        }
        self.offload = flags;
    }

    /// Sends every frame the guest has queued to the tap (or drops it, without a tap),
    /// then returns the chains. Returns how many chains were used.
    pub fn process_tx(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let index = self.index;
        let metrics = &self.metrics;
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ_INDEX].queue;
        self.tx_blocked = false;
        let mut used = 0;
        let mut idle_passes = 0;
        'queue: loop {
            let mut popped = 0;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                popped += 1;
                let sent = match frame::tx_frame(mem, chain) {
                    Err(e) => {
                        log::debug!("virtio-net {index}: dropped tx chain {head}: {e}");
                        false
                    }
                    Ok(_) if self.tap.is_none() => false,
                    Ok(slices) => match self.tap.as_ref().map(|t| t.write_slices(&slices)) {
                        Some(Ok(n)) => {
                            NetMetrics::add(&metrics.tx_frames, 1);
                            let bytes = n.saturating_sub(VNET_HDR_LEN) as u64;
                            NetMetrics::add(&metrics.tx_bytes, bytes);
                            true
                        }
                        Some(Err(e)) if e.kind() == ErrorKind::WouldBlock => {
                            // The chain stays in the queue until the tap drains.
                            queue.go_to_previous_position();
                            self.tx_blocked = true;
                            log::debug!("virtio-net {index}: tap full; tx waits");
                            break 'queue;
                        }
                        Some(Err(e)) => {
                            log::debug!("virtio-net {index}: tap write failed: {e}");
                            false
                        }
                        None => false,
                    },
                };
                if !sent {
                    NetMetrics::add(&metrics.tx_dropped, 1);
                }
                if let Err(e) = queue.add_used(mem, head, 0) {
                    log::error!("virtio-net {index}: cannot return tx chain {head}: {e}");
                }
                used += 1;
            }
            if popped == 0 {
                idle_passes += 1;
            }
            // With EVENT_IDX this also tells the driver where to notify next. An
            // available ring that says there is more but yields nothing (an index the
            // driver corrupted) must not have us spin.
            match queue.enable_notification(mem) {
                Ok(true) if idle_passes < 2 => {}
                Ok(true) => {
                    log::error!("virtio-net {index}: the tx ring is corrupt; queue stalled");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    log::error!("virtio-net {index}: tx queue: {e}");
                    break;
                }
            }
        }
        if used > 0 {
            active.signal_used(TXQ_INDEX, index);
        }
        used
    }

    /// Moves frames from the tap into the guest's rx buffers until the tap has none
    /// (`EAGAIN`) or the guest has no room; then the frame in hand is held for the
    /// driver's next rx notification. Returns how many frames reached the guest.
    pub fn process_rx(&mut self) -> usize {
        let (Some(active), Some(tap)) = (self.active.as_mut(), self.tap.as_ref()) else {
            return 0;
        };
        let index = self.index;
        let metrics = &self.metrics;
        let mergeable = self.acked_features & VIRTIO_NET_F_MRG_RXBUF != 0;
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX].queue;
        let used_before = queue.next_used();
        let mut delivered = 0;
        let mut read_errors = 0;
        loop {
            let len = match self.rx_held.take() {
                Some(len) => len,
                None => match tap.read_frame(&mut self.rx_buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    // A frame the tap could not hand over is lost, but the ones behind it
                    // are not: the tap is edge-triggered, so stopping here would leave
                    // them until the next frame arrives. A tap that keeps failing is
                    // given up on until then.
                    Err(e) => {
                        NetMetrics::add(&metrics.rx_dropped, 1);
                        log::warn!("virtio-net {index}: cannot read tap {}: {e}", tap.name());
                        read_errors += 1;
                        if read_errors >= MAX_READ_ERRORS {
                            break;
                        }
                        continue;
                    }
                },
            };
            let Some(frame) = self.rx_buf.get_mut(..len) else {
                break;
            };
            match frame::deliver_frame(mem, queue, frame, mergeable) {
                RxOutcome::Delivered { .. } => {
                    NetMetrics::add(&metrics.rx_frames, 1);
                    let bytes = len.saturating_sub(VNET_HDR_LEN) as u64;
                    NetMetrics::add(&metrics.rx_bytes, bytes);
                    delivered += 1;
                }
                RxOutcome::NoBuffers => {
                    self.rx_held = Some(len);
                    break;
                }
                RxOutcome::Dropped(e) => {
                    NetMetrics::add(&metrics.rx_dropped, 1);
                    log::debug!("virtio-net {index}: dropped an rx frame of {len} bytes: {e}");
                }
            }
        }
        match frame::rx_needs_notification(mem, queue, used_before) {
            Ok(true) => {
                if let Err(e) = active.interrupt.signal_used_queue() {
                    log::warn!("virtio-net {index}: cannot signal the rx queue: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("virtio-net {index}: rx queue: {e}"),
        }
        delivered
    }

    /// Whether a frame waits for rx buffers.
    pub fn rx_held(&self) -> bool {
        self.rx_held.is_some()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        match &self.vhost {
            Some(vhost) => vhost.guest_features(),
            None => AVAIL_FEATURES,
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        if activation.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: activation.queues.len(),
            });
        }
        log::debug!(
            "virtio-net {}: activated with features {:#x}",
            self.index,
            activation.acked_features
        );
        self.acked_features = activation.acked_features;
        if let Some(vhost) = self.vhost.as_mut() {
            // The rings, then the tap's offloads, then the tap: vhost reads no frame
            // before the tap knows what the guest takes.
            if let Err(e) = vhost.start(&activation) {
                self.acked_features = 0;
                return Err(ActivateError::Device(e.to_string()));
            }
            self.apply_offload();
            if let (Some(vhost), Some(tap)) = (self.vhost.as_mut(), self.tap.as_ref()) {
                if let Err(e) = vhost.attach(tap) {
                    vhost.stop();
                    self.acked_features = 0;
                    self.apply_offload();
                    return Err(ActivateError::Device(e.to_string()));
                }
            }
            return self.update_evt.write(1).map_err(ActivateError::Signal);
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
            registered: false,
        });
        self.apply_offload();
        self.update_evt.write(1).map_err(ActivateError::Signal)
    }

    /// The driver wrote status 0: forget its queues and the frame held for it; the tap
    /// stays, without offloads, until the driver activates the device again.
    fn reset(&mut self) -> bool {
        if let Some(vhost) = self.vhost.as_mut() {
            vhost.stop();
        }
        if let Some(active) = self.active.take() {
            if active.registered {
                self.stale_notify
                    .extend(active.queues.into_iter().map(|q| q.notify));
            }
        }
        if self.rx_held.take().is_some() {
            NetMetrics::add(&self.metrics.rx_dropped, 1);
        }
        self.acked_features = 0;
        self.tx_blocked = false;
        if self.offload != 0 {
            self.apply_offload();
        }
        log::debug!("virtio-net {}: reset", self.index);
        self.wake_event_loop();
        true
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
