//! virtio devices over the virtio-mmio transport (virtio 1.2, modern interface only).
//!
//! A device implements [`VirtioDevice`] (what the transport needs) and event-manager's
//! `MutEventSubscriber` (its work on the VM's device thread). The driver's writes reach
//! the transport on a vCPU thread; activation hands the device its queues and their
//! notification eventfds, and the device registers those with the event loop only then
//! (through its own activation eventfd), as Firecracker's devices do.

pub mod block;
pub mod fs;
pub mod interrupt;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::Interrupt;
pub use mmio::MmioTransport;

/// Device IDs (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// Feature bits every device of ours offers: modern virtio, event index suppression.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device status bits (virtio 1.2 §2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// A queue the driver has made ready, with the eventfd it notifies through.
#[derive(Debug)]
pub struct ActiveQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<Interrupt>,
    /// The features the driver accepted (a subset of the device's).
    pub acked_features: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("expected {expected} queues, the driver made {got} ready")]
    QueueCount { expected: usize, got: usize },
    #[error("device already activated")]
    AlreadyActive,
    #[error("cannot signal the device thread: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// The device side of a virtio device, as the transport drives it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The maximum size of each of the device's queues (the length is the queue count).
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered to the driver.
    fn avail_features(&self) -> u64;
    /// Reads the device-specific configuration space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; most devices ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio type {}: ignored config write at {offset:#x} ({} bytes)",
            self.device_type(),
            data.len()
        );
    }
    /// Starts the device with the queues the driver set up. Called on a vCPU thread:
    /// the device stores what it needs and wakes its event-loop side.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device after the driver wrote status 0. Devices that cannot be reset
    /// return false and the transport reports DEVICE_NEEDS_RESET instead.
    fn reset(&mut self) -> bool {
        false
    }
}

/// Copies `src[offset..]` into `data` (zero past the end): the common shape of a config
/// space read.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(tail) = src.get(offset..) {
        let n = tail.len().min(data.len());
        data[..n].copy_from_slice(&tail[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_past_the_end_are_zero() {
        let cfg = [1u8, 2, 3, 4];
        let mut out = [0xffu8; 4];
        read_config_bytes(&cfg, 2, &mut out);
        assert_eq!(out, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut out);
        assert_eq!(out, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut out);
        assert_eq!(out, [0; 4]);
    }
}
