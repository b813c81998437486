//! The virtio side of the vsock device: identity, config space, activation and the
//! processing of its queues. The muxer decides what the packets mean.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use virtio_vsock::packet::{Error as PacketError, VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Address, Bytes, GuestMemory, GuestMemoryMmap, Permissions, VolatileSlice};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::{VsockConfig, VsockError, MAX_PKT_DATA, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, ActiveQueue, Interrupt, VirtioDevice, TYPE_VSOCK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// A packet from the guest: its header and its payload as guest memory slices.
struct TxPacket<'a> {
    hdr: VsockPacket<'a, ()>,
    /// The payload when it came in several pieces; else it is the header's data slice.
    scattered: Vec<VolatileSlice<'a, ()>>,
}

impl<'a> TxPacket<'a> {
    fn data(&self) -> &[VolatileSlice<'a, ()>] {
        if !self.scattered.is_empty() {
            return &self.scattered;
        }
        self.hdr.data_slice().map_or(&[], std::slice::from_ref)
    }
}

/// Parses a tx chain with the virtio-vsock crate; a payload scattered over several
/// descriptors, which the crate does not take, goes through `parse_scattered`.
fn parse_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: &DescriptorChain<&'a GuestMemoryMmap>,
    scratch: &'a mut [u8; PKT_HEADER_SIZE],
) -> Result<TxPacket<'a>, PacketError> {
    // With more descriptors behind it, the crate would skip payload bytes that share the
    // head descriptor with the header.
    let head = chain
        .clone()
        .next()
        .ok_or(PacketError::DescriptorChainTooShort)?;
    if head.has_next() && head.len() as usize > PKT_HEADER_SIZE {
        return parse_scattered(mem, chain.clone(), scratch);
    }
    match VsockPacket::from_tx_virtq_chain(mem, &mut chain.clone(), MAX_PKT_DATA) {
        Ok(hdr) => Ok(TxPacket {
            hdr,
            scattered: Vec::new(),
        }),
        Err(PacketError::DescriptorChainTooShort | PacketError::DescriptorLengthTooSmall) => {
            parse_scattered(mem, chain.clone(), scratch)
        }
        Err(e) => Err(e),
    }
}

/// Linux puts a payload in several descriptors when its skb is nonlinear (zerocopy sends;
/// since 6.17, and in 6.12.y stable, any payload over 32 KiB). The header is still alone
/// at the head: it is copied into `scratch` and read through the crate's packet type; the
/// payload is every readable byte after it, up to the header's `len`.
fn parse_scattered<'a>(
    mem: &'a GuestMemoryMmap,
    mut chain: DescriptorChain<&'a GuestMemoryMmap>,
    scratch: &'a mut [u8; PKT_HEADER_SIZE],
) -> Result<TxPacket<'a>, PacketError> {
    let head = chain.next().ok_or(PacketError::DescriptorChainTooShort)?;
    if head.is_write_only() {
        return Err(PacketError::UnexpectedWriteOnlyDescriptor);
    }
    let head_len = head.len() as usize;
    if head_len < PKT_HEADER_SIZE {
        return Err(PacketError::DescriptorLengthTooSmall);
    }
    mem.read_slice(scratch, head.addr())
        .map_err(PacketError::InvalidMemoryAccess)?;
    let raw = *scratch;
    // SAFETY: `scratch` is borrowed mutably for 'a, as long as the packet can live, so the
    // header slice the packet builds over it stays valid and nothing else accesses it.
    let mut hdr = unsafe { VsockPacket::new(scratch, None) }?;
    hdr.set_header_from_raw(&raw)?;
    if hdr.len() > MAX_PKT_DATA {
        return Err(PacketError::InvalidHeaderLen(hdr.len()));
    }
    let mut want = hdr.len() as usize;
    let mut scattered = Vec::new();
    // Bytes after the header in the head descriptor come first.
    let mut piece = head
        .addr()
        .checked_add(PKT_HEADER_SIZE as u64)
        .map(|addr| (addr, head_len - PKT_HEADER_SIZE));
    while want > 0 {
        let (addr, len) = match piece.take() {
            Some(p) => p,
            None => {
                let desc = chain.next().ok_or(PacketError::DescriptorChainTooShort)?;
                if desc.is_write_only() {
                    return Err(PacketError::UnexpectedWriteOnlyDescriptor);
                }
                (desc.addr(), desc.len() as usize)
            }
        };
        let take = len.min(want);
        if take == 0 {
            continue;
        }
        let slices = GuestMemory::get_slices(mem, addr, take, Permissions::Read)
            .map_err(PacketError::InvalidMemoryAccess)?;
        for slice in slices {
            scattered.push(slice.map_err(PacketError::InvalidMemoryAccess)?);
        }
        want -= take;
    }
    Ok(TxPacket { hdr, scattered })
}

/// What the device got from the driver at activation.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) queues: Vec<ActiveQueue>,
    pub(super) interrupt: Arc<Interrupt>,
    /// Whether the queue eventfds are registered with the event loop yet.
    pub(super) registered: bool,
}

impl Active {
    /// Interrupts the driver if the queue's notification suppression allows it.
    fn signal_used(&mut self, index: usize) {
        let Some(q) = self.queues.get_mut(index) else {
            return;
        };
        match q.queue.needs_notification(&self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    log::warn!("vsock: cannot signal queue {index}: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("vsock: queue {index}: {e}"),
        }
    }
}

/// A virtio-vsock device whose host side is a Unix socket (see the module docs).
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    acked_features: u64,
    pub(super) activate_evt: EventFd,
    pub(super) timer: TimerFd,
    /// The deadline the timer is armed for.
    pub(super) timer_at: Option<Instant>,
    pub(super) muxer: Muxer,
    pub(super) active: Option<Active>,
    /// Queue eventfds of a driver that reset the device: registered with the event loop
    /// until the device thread removes them (closing them first would leave the
    /// registration alive through the transport's copies).
    pub(super) stale_notify: Vec<EventFd>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("cid", &self.cid)
            .field("uds_path", &self.uds_path)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Binds the host-side socket at `config.uds_path`; the device serves it from the
    /// event loop once registered there.
    pub fn new(config: VsockConfig) -> Result<Self, VsockError> {
        let VsockConfig {
            guest_cid,
            uds_path,
        } = config;
        if guest_cid <= 2 || guest_cid == u32::MAX {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::SocketExists(uds_path));
        }
        let listener = crate::uds::bind(&uds_path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| VsockError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        // The socket file is ours now: remove it if the rest fails (Drop does later).
        let activate_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd);
        let timer = TimerFd::new().map_err(|e| VsockError::Timer(e.into()));
        let (activate_evt, timer) = match (activate_evt, timer) {
            (Ok(evt), Ok(timer)) => (evt, timer),
            (Err(e), _) | (_, Err(e)) => {
                let _ = std::fs::remove_file(&uds_path);
                return Err(e);
            }
        };
        let cid = u64::from(guest_cid);
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, uds_path.clone(), listener),
            uds_path,
            acked_features: 0,
            activate_evt,
            timer,
            timer_at: None,
            active: None,
            stale_notify: Vec::new(),
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn uds_path(&self) -> &std::path::Path {
        &self.uds_path
    }

    /// The guest sent packets (tx queue): hand each to the muxer, then return the buffers.
    pub(super) fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ_INDEX].queue;
        let mut used = false;
        loop {
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let mut scratch = [0u8; PKT_HEADER_SIZE];
                match parse_tx(mem, &chain, &mut scratch) {
                    Ok(pkt) => self.muxer.send_to_host(&pkt.hdr, pkt.data()),
                    Err(e) => log::warn!("vsock cid {}: dropped a bad tx packet: {e}", self.cid),
                }
                if let Err(e) = queue.add_used(mem, head, 0) {
                    log::warn!("vsock cid {}: tx queue: {e}", self.cid);
                }
                used = true;
            }
            // With EVENT_IDX this also tells the driver where to notify next.
            match queue.enable_notification(mem) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::warn!("vsock cid {}: tx queue: {e}", self.cid);
                    break;
                }
            }
        }
        if used {
            active.signal_used(TXQ_INDEX);
        }
    }

    /// Fills the guest's rx buffers with what the muxer has for it; when there are none,
    /// waits for the driver's next rx notification.
    pub(super) fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX].queue;
        let now = Instant::now();
        let mut used = false;
        while self.muxer.has_rx_work() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                match queue.enable_notification(mem) {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        log::warn!("vsock cid {}: rx queue: {e}", self.cid);
                        break;
                    }
                }
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match self.muxer.fill_rx(&mut pkt, now) {
                    Some(len) => len,
                    None => {
                        // Nothing fits this buffer after all; keep it for later.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    log::warn!("vsock cid {}: returned a bad rx buffer: {e}", self.cid);
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("vsock cid {}: rx queue: {e}", self.cid);
            }
            used = true;
        }
        if used {
            active.signal_used(RXQ_INDEX);
        }
    }

    /// Arms the timer for the muxer's next deadline.
    pub(super) fn arm_timer(&mut self) {
        let next = self.muxer.next_deadline();
        if next == self.timer_at {
            return;
        }
        let result = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                // A zero duration would disarm the timer.
                self.timer.reset(wait.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        match result {
            Ok(()) => self.timer_at = next,
            Err(e) => log::warn!("vsock cid {}: cannot arm timer: {e}", self.cid),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    /// The driver wrote status 0 (Linux does at every power-off): forget its queues and
    /// end every stream; the listener stays, so a driver that activates the device again
    /// serves host clients as before. Called on a vCPU thread: the device thread
    /// unregisters the queue eventfds and closes the host sockets.
    fn reset(&mut self) -> bool {
        if let Some(active) = self.active.take() {
            if active.registered {
                self.stale_notify
                    .extend(active.queues.into_iter().map(|q| q.notify));
            }
        }
        self.acked_features = 0;
        self.muxer.reset();
        if let Err(e) = self.activate_evt.write(1) {
            log::error!("vsock cid {}: cannot wake the device thread: {e}", self.cid);
        }
        true
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if a.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: a.queues.len(),
            });
        }
        self.acked_features = a.acked_features;
        self.active = Some(Active {
            mem: a.mem,
            queues: a.queues,
            interrupt: a.interrupt,
            registered: false,
        });
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.muxer.close_all();
        drop(self.muxer.take_fd_changes());
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("vsock: cannot remove {}: {e}", self.uds_path.display());
            }
        }
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
