//! The interrupt of a virtio-mmio device: a status register the driver reads and acks,
//! and an irqfd that raises the device's GSI.

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// The eventfd registered as the device's irqfd.
    pub fn irq_evt(&self) -> &EventFd {
        &self.irq
    }

    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irq.write(1)
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(INT_VRING)
    }

    /// Tells the driver that the configuration (or DEVICE_NEEDS_RESET) changed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(INT_CONFIG)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the bits the driver acknowledged.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_sets_status_and_fires_irq_until_acked() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.signal_used_queue().unwrap();
        i.signal_config_change().unwrap();
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        assert_eq!(i.irq_evt().read().unwrap(), 2);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
    }
}
