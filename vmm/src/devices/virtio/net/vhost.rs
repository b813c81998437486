//! The vhost-net backend of the virtio-net device: the host kernel moves frames between
//! the guest's rings and the tap in a worker thread of its own, with no VMM thread in
//! the path.
//!
//! - At VM build, [`Vhost::open`] opens `/dev/vhost-net` (an error names it: the caller
//!   chose this backend, so there is no fallback) and reads the features it offers.
//! - At DRIVER_OK, [`Vhost::start`]: SET_OWNER, SET_FEATURES (the acked features vhost
//!   implements), SET_MEM_TABLE, then per queue SET_VRING_NUM/ADDR/BASE/KICK/CALL. The
//!   kick is the queue's notify eventfd, which KVM signals on the guest's notify (an
//!   ioeventfd); the call is the device's irqfd, which vhost writes to interrupt the
//!   guest, so the interrupt status is made to read "used buffer" meanwhile
//!   ([`Interrupt::set_vring_always`]).
//! - [`Vhost::attach`] gives the running rings the tap (SET_BACKEND): right after
//!   `start` if the device has one, or when a late tap is attached.
//! - [`Vhost::stop`], at a driver reset: SET_BACKEND -1, then the fd is closed, which
//!   ends the kernel's worker; the next activation opens a new one.
//!
//! Headers: without VHOST_NET_F_VIRTIO_NET_HDR, vhost-net passes the guest's header to
//! the tap and back untouched, and sizes it from the features: 12 bytes with VERSION_1
//! (which the transport requires) or MRG_RXBUF, the tap's TUNSETVNETHDRSZ. Offloads are
//! the tap's (TUNSETOFFLOAD from the acked guest features, set by the device as in
//! userspace mode): vhost neither offers nor needs the offload feature bits.
//!
//! The ioctls go through [`VhostNetOps`], implemented by the `vhost` crate's kernel
//! handle and, in tests, by a recording fake.

use std::fs::File;
use std::sync::Arc;

use vhost::net::VhostNet;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::device::AVAIL_FEATURES;
use super::{NetError, Tap, VIRTIO_NET_F_MRG_RXBUF, VNET_HDR_LEN};
use crate::devices::virtio::{Activation, Interrupt, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

/// The device node of the kernel's vhost-net.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// The virtio features vhost-net implements that we offer the guest: everything else we
/// offer (MAC, STATUS, the offloads) is the device's or the tap's business. vhost's own
/// bits never pass: VHOST_F_LOG_ALL (26) and VHOST_NET_F_VIRTIO_NET_HDR (27), which
/// would make vhost add and strip the header itself.
pub const VHOST_FEATURES_USED: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX;

/// `struct virtio_net_hdr` without `num_buffers`: the header without VERSION_1 and
/// MRG_RXBUF.
const LEGACY_HDR_LEN: usize = 10;

/// The vhost-net ioctls the device uses: the kernel's through the `vhost` crate, or a
/// recording fake in tests. Ring addresses are guest-physical; the kernel handle
/// translates them through the guest memory it was opened with.
pub trait VhostNetOps: Send {
    fn get_features(&self) -> vhost::Result<u64>;
    fn set_owner(&self) -> vhost::Result<()>;
    fn set_features(&self, features: u64) -> vhost::Result<()>;
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()>;
    fn set_vring_num(&self, queue: usize, num: u16) -> vhost::Result<()>;
    fn set_vring_addr(&self, queue: usize, config: &VringConfigData) -> vhost::Result<()>;
    fn set_vring_base(&self, queue: usize, base: u16) -> vhost::Result<()>;
    fn set_vring_kick(&self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    fn set_vring_call(&self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// The tap behind the queue, or none (vhost stops serving it).
    fn set_backend(&self, queue: usize, tap: Option<&File>) -> vhost::Result<()>;
}

/// The kernel's vhost-net, through the `vhost` crate.
impl VhostNetOps for KernNet<Arc<GuestMemoryMmap>> {
    fn get_features(&self) -> vhost::Result<u64> {
        VhostBackend::get_features(self)
    }
    fn set_owner(&self) -> vhost::Result<()> {
        VhostBackend::set_owner(self)
    }
    fn set_features(&self, features: u64) -> vhost::Result<()> {
        VhostBackend::set_features(self, features)
    }
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        VhostBackend::set_mem_table(self, regions).map(|_| ())
    }
    fn set_vring_num(&self, queue: usize, num: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_num(self, queue, num)
    }
    fn set_vring_addr(&self, queue: usize, config: &VringConfigData) -> vhost::Result<()> {
        VhostBackend::set_vring_addr(self, queue, config)
    }
    fn set_vring_base(&self, queue: usize, base: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_base(self, queue, base)
    }
    fn set_vring_kick(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_kick(self, queue, fd)
    }
    fn set_vring_call(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_call(self, queue, fd)
    }
    fn set_backend(&self, queue: usize, tap: Option<&File>) -> vhost::Result<()> {
        VhostNet::set_backend(self, queue, tap)
    }
}

/// Opens a vhost-net instance whose rings live in `mem`.
pub type Opener =
    Box<dyn Fn(&GuestMemoryMmap) -> vhost::Result<Box<dyn VhostNetOps>> + Send + Sync>;

/// Opens [`VHOST_NET_PATH`].
pub fn open_kernel(mem: &GuestMemoryMmap) -> vhost::Result<Box<dyn VhostNetOps>> {
    Ok(Box::new(KernNet::new(Arc::new(mem.clone()))?))
}

/// What the guest is offered out of [`AVAIL_FEATURES`]: the features vhost must
/// implement only when it does.
pub fn guest_features(vhost_offered: u64) -> u64 {
    AVAIL_FEATURES & !(VHOST_FEATURES_USED & !vhost_offered)
}

/// What vhost is told (SET_FEATURES): the acked features it implements.
pub fn vhost_features(acked: u64, vhost_offered: u64) -> u64 {
    acked & vhost_offered & VHOST_FEATURES_USED
}

/// The header vhost-net expects on the tap with `features` (`vhost_net_set_features`).
pub fn vnet_hdr_len(features: u64) -> usize {
    if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
        VNET_HDR_LEN
    } else {
        LEGACY_HDR_LEN
    }
}

/// Guest RAM as SET_MEM_TABLE takes it: each region's guest address, size and where the
/// VMM maps it.
pub fn memory_regions(mem: &GuestMemoryMmap) -> Vec<VhostUserMemoryRegionInfo> {
    mem.iter()
        .map(|region| VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            // The kernel maps nothing: it reads the VMM's own mapping.
            mmap_offset: 0,
            mmap_handle: -1,
        })
        .collect()
}

/// The rings as the driver laid them out.
fn vring_config(queue: &virtio_queue::Queue) -> VringConfigData {
    VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: queue.desc_table(),
        used_ring_addr: queue.used_ring(),
        avail_ring_addr: queue.avail_ring(),
        log_addr: None,
    }
}

/// A started vhost-net.
#[derive(Debug)]
struct Running {
    queues: usize,
    interrupt: Arc<Interrupt>,
    /// Whether the rings have the tap (SET_BACKEND).
    tap_set: bool,
}

/// The vhost-net side of one virtio-net device.
pub struct Vhost {
    index: usize,
    open: Opener,
    /// The open vhost-net fd: from [`Vhost::open`] until a reset, then from the next
    /// activation.
    handle: Option<Box<dyn VhostNetOps>>,
    /// What vhost-net offered when first opened.
    offered: u64,
    running: Option<Running>,
}

impl std::fmt::Debug for Vhost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vhost")
            .field("index", &self.index)
            .field("open", &self.handle.is_some())
            .field("offered", &format_args!("{:#x}", self.offered))
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

fn open_error(index: usize, e: vhost::Error) -> NetError {
    match e {
        vhost::Error::VhostOpen(source) => NetError::VhostOpen {
            index,
            path: VHOST_NET_PATH,
            source,
        },
        source => NetError::Vhost {
            index,
            what: "open",
            source,
        },
    }
}

impl Vhost {
    /// Opens vhost-net for device `index` over `mem` and reads what it offers.
    pub fn open(index: usize, mem: &GuestMemoryMmap, open: Opener) -> Result<Self, NetError> {
        let handle = open(mem).map_err(|e| open_error(index, e))?;
        let offered = handle.get_features().map_err(|source| NetError::Vhost {
            index,
            what: "GET_FEATURES",
            source,
        })?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(NetError::VhostUnsuitable {
                index,
                why: format!("offers features {offered:#x}, without VIRTIO_F_VERSION_1"),
            });
        }
        log::debug!("virtio-net {index}: vhost-net offers {offered:#x}");
        Ok(Self {
            index,
            open,
            handle: Some(handle),
            offered,
            running: None,
        })
    }

    /// What the guest is offered.
    pub fn guest_features(&self) -> u64 {
        guest_features(self.offered)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// The interrupt of the running rings.
    pub fn interrupt(&self) -> Option<&Arc<Interrupt>> {
        self.running.as_ref().map(|r| &r.interrupt)
    }

    /// Hands the driver's rings to vhost-net (the tap comes with [`Vhost::attach`]). On
    /// an error, whatever vhost took is let go of ([`Vhost::stop`]).
    pub fn start(&mut self, activation: &Activation) -> Result<(), NetError> {
        let result = self.try_start(activation);
        if result.is_err() {
            self.stop();
        }
        result
    }

    fn try_start(&mut self, activation: &Activation) -> Result<(), NetError> {
        let index = self.index;
        if self.handle.is_none() {
            self.handle = Some((self.open)(&activation.mem).map_err(|e| open_error(index, e))?);
        }
        let Some(h) = self.handle.as_deref() else {
            return Ok(());
        };
        let err = |what| {
            move |source| NetError::Vhost {
                index,
                what,
                source,
            }
        };
        let features = vhost_features(activation.acked_features, self.offered);
        if vnet_hdr_len(features) != VNET_HDR_LEN {
            return Err(NetError::VhostUnsuitable {
                index,
                why: format!("would use a {}-byte header with features {features:#x}, the tap has {VNET_HDR_LEN}", vnet_hdr_len(features)),
            });
        }
        h.set_owner().map_err(err("SET_OWNER"))?;
        h.set_features(features).map_err(err("SET_FEATURES"))?;
        h.set_mem_table(&memory_regions(&activation.mem))
            .map_err(err("SET_MEM_TABLE"))?;
        let irq = activation.interrupt.irq_evt();
        for (i, q) in activation.queues.iter().enumerate() {
            h.set_vring_num(i, q.queue.size())
                .map_err(err("SET_VRING_NUM"))?;
            h.set_vring_addr(i, &vring_config(&q.queue))
                .map_err(err("SET_VRING_ADDR"))?;
            h.set_vring_base(i, q.queue.next_avail())
                .map_err(err("SET_VRING_BASE"))?;
            h.set_vring_kick(i, &q.notify)
                .map_err(err("SET_VRING_KICK"))?;
            h.set_vring_call(i, irq).map_err(err("SET_VRING_CALL"))?;
        }
        // From here vhost may write the irqfd.
        activation.interrupt.set_vring_always(true);
        self.running = Some(Running {
            queues: activation.queues.len(),
            interrupt: activation.interrupt.clone(),
            tap_set: false,
        });
        log::debug!("virtio-net {index}: vhost-net started with features {features:#x}");
        Ok(())
    }

    /// Puts `tap` behind the running rings; before [`Vhost::start`], does nothing (start
    /// will). On an error no ring keeps the tap: vhost holds a reference to the file, so
    /// a ring that kept it would keep the interface alive, and served, after the device
    /// gave it up.
    pub fn attach(&mut self, tap: &Tap) -> Result<(), NetError> {
        let index = self.index;
        let (Some(running), Some(h)) = (self.running.as_mut(), self.handle.as_deref()) else {
            return Ok(());
        };
        for i in 0..running.queues {
            if let Err(source) = h.set_backend(i, Some(tap.file())) {
                for j in 0..i {
                    if let Err(e) = h.set_backend(j, None) {
                        log::warn!("virtio-net {index}: vhost-net SET_BACKEND -1: {e}");
                    }
                }
                return Err(NetError::Vhost {
                    index,
                    what: "SET_BACKEND",
                    source,
                });
            }
        }
        running.tap_set = true;
        log::debug!("virtio-net {index}: vhost-net serves tap {}", tap.name());
        Ok(())
    }

    /// Stops vhost-net: the rings let go of the tap, and the fd is closed, which stops
    /// the kernel's worker and drops its hold on the rings and guest memory.
    pub fn stop(&mut self) {
        let handle = self.handle.take();
        let Some(running) = self.running.take() else {
            return;
        };
        if let (true, Some(h)) = (running.tap_set, handle.as_deref()) {
            for i in 0..running.queues {
                if let Err(e) = h.set_backend(i, None) {
                    log::warn!("virtio-net {}: vhost-net SET_BACKEND -1: {e}", self.index);
                }
            }
        }
        drop(handle);
        running.interrupt.set_vring_always(false);
        log::debug!("virtio-net {}: vhost-net stopped", self.index);
    }
}

#[cfg(test)]
#[path = "vhost_tests.rs"]
mod tests;
