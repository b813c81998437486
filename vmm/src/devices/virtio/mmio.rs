//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 register layout).
//!
//! It holds the driver-visible state (status, features, queue set-up) and hands the
//! device its queues at DRIVER_OK. Everything the driver writes is checked: writes out of
//! sequence are ignored, features the device did not offer fail FEATURES_OK, and queues
//! whose rings do not fit in guest memory fail activation.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt::Interrupt;
use super::{status, Activation, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

/// Size of one device's register window.
pub const MMIO_LEN: u64 = 0x1000;
/// Offset of the QueueNotify register, where KVM ioeventfds are attached.
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "RUNM", little-endian.
const VENDOR_ID: u32 = 0x4d4e_5552;
const CONFIG_OFFSET: u64 = 0x100;

/// One device behind the transport.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    notify_evts: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("acked_features", &self.acked_features)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("invalid queue size {0}")]
    QueueSize(u16),
    #[error("cannot create queue notification eventfd: {0}")]
    EventFd(std::io::Error),
}

/// The low 32 bits (feature words are read 32 bits at a time).
#[allow(clippy::cast_possible_truncation)]
fn low32(v: u64) -> u32 {
    v as u32
}

fn lock(d: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(|e| e.into_inner())
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let sizes: Vec<u16> = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&s| Queue::new(s).map_err(|_| MmioError::QueueSize(s)))
            .collect::<Result<Vec<_>, _>>()?;
        let notify_evts = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            notify_evts,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The eventfd signalled when the driver notifies queue `i` (for KVM ioeventfd).
    pub fn notify_evts(&self) -> &[EventFd] {
        &self.notify_evts
    }

    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let i = usize::try_from(self.queue_sel).ok()?;
        self.queues.get_mut(i)
    }

    /// Queue registers may be written only while the driver sets the device up.
    fn queue_setup_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    fn features_setup_allowed(&self) -> bool {
        self.status & status::DRIVER != 0
            && self.status & (status::FEATURES_OK | status::FAILED) == 0
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => lock(&self.device).device_type(),
            0x00c => VENDOR_ID,
            0x010 => {
                let features = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => low32(features),
                    1 => low32(features >> 32),
                    _ => 0,
                }
            }
            0x034 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x044 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 if self.features_setup_allowed() => {
                let v = u64::from(value);
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | v,
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (v << 32),
                    _ => {}
                }
            }
            0x024 => self.driver_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 if setup => {
                if let (Some(q), Ok(n)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(n);
                }
            }
            0x044 if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x050 => self.notify_without_ioeventfd(value),
            0x064 => self.interrupt.ack(value),
            0x070 => self.write_status(value),
            0x080 | 0x084 | 0x090 | 0x094 | 0x0a0 | 0x0a4 if setup => {
                let Some(q) = self.selected_queue() else {
                    return;
                };
                match offset {
                    0x080 => q.set_desc_table_address(Some(value), None),
                    0x084 => q.set_desc_table_address(None, Some(value)),
                    0x090 => q.set_avail_ring_address(Some(value), None),
                    0x094 => q.set_avail_ring_address(None, Some(value)),
                    0x0a0 => q.set_used_ring_address(Some(value), None),
                    _ => q.set_used_ring_address(None, Some(value)),
                }
            }
            _ => log::debug!(
                "virtio-mmio: ignored write {value:#x} to register {offset:#x} (status {:#x})",
                self.status
            ),
        }
    }

    /// A notify that reached us as an MMIO exit (no ioeventfd matched): pass it on.
    fn notify_without_ioeventfd(&self, queue: u32) {
        let evt = usize::try_from(queue)
            .ok()
            .and_then(|i| self.notify_evts.get(i));
        match evt {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    log::warn!("virtio-mmio: cannot signal queue {queue}: {e}");
                }
            }
            None => log::debug!("virtio-mmio: notify for unknown queue {queue}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits, one step at a time (virtio 1.2 §3.1.1).
        if value & self.status != self.status {
            log::warn!(
                "virtio-mmio: status {value:#x} drops bits of {:#x}; ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            log::warn!(
                "virtio-mmio: driver accepted features {:#x} beyond those offered, or not VERSION_1",
                self.acked_features
            );
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = lock(&self.device).avail_features() | VIRTIO_F_VERSION_1;
        self.acked_features & !offered == 0 && self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 || self.activated {
            self.fail("DRIVER_OK without FEATURES_OK, or twice");
            return;
        }
        let event_idx = self.acked_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                self.fail(&format!("queue {i} is not valid in guest memory"));
                return;
            }
            q.set_event_idx(event_idx);
            let notify = match self.notify_evts[i].try_clone() {
                Ok(evt) => evt,
                Err(e) => {
                    self.fail(&format!("cannot clone queue {i} eventfd: {e}"));
                    return;
                }
            };
            // The state round trip re-validates what the driver wrote.
            let queue = match Queue::try_from(q.state()) {
                Ok(queue) => queue,
                Err(e) => {
                    self.fail(&format!("queue {i}: {e}"));
                    return;
                }
            };
            queues.push(ActiveQueue { queue, notify });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: self.acked_features,
        };
        let result = lock(&self.device).activate(activation);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&format!("activation failed: {e}")),
        }
    }

    /// Tells the driver the device needs a reset (virtio 1.2 §2.1.2).
    fn fail(&mut self, why: &str) {
        log::error!(
            "virtio-mmio: device type {}: {why}",
            lock(&self.device).device_type()
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            log::warn!("virtio-mmio: cannot raise config interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        if self.activated && !lock(&self.device).reset() {
            self.fail("the device cannot be reset");
            return;
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => *bytes = self.read_reg(offset).to_le_bytes(),
            Ok(bytes) => *bytes = [0; 4],
            Err(_) => {
                // Registers are 32-bit; other widths are a driver bug (virtio 1.2 §4.2.2.2).
                log::debug!("virtio-mmio: non-32-bit register read at {offset:#x}");
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_reg(offset, u32::from_le_bytes(bytes)),
            _ => log::debug!("virtio-mmio: bad register write at {offset:#x}"),
        }
    }
}

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
