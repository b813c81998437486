//! The interrupt of a virtio-mmio device: a status register the driver reads and acks,
//! and an irqfd that raises the device's GSI.
//!
//! A backend in the host kernel (vhost-net) writes the irqfd itself and cannot set the
//! status register; the Linux virtio-mmio driver ignores an interrupt whose status lacks
//! [`INT_VRING`]. While such a backend runs, [`Interrupt::set_vring_always`] makes the
//! register read [`INT_VRING`] whatever the driver acked: every interrupt of the device
//! then looks at the used rings, which costs a spurious check at most (a config-change
//! interrupt also scans the rings, and a ring without new used buffers is skipped).

use std::sync::atomic::{AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit: a used ring was updated.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit: the configuration space changed.
pub const INT_CONFIG: u32 = 2;

#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    /// Bits that read as set whatever the driver acks ([`INT_VRING`] or nothing).
    always: AtomicU32,
    irq: EventFd,
}

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            always: AtomicU32::new(0),
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
        self.status.load(Ordering::SeqCst) | self.always.load(Ordering::SeqCst)
    }

    /// While `on`, the status reads [`INT_VRING`] even when nothing in the VMM raised it:
    /// for a backend that writes the irqfd directly. Off again at the device's reset.
    pub fn set_vring_always(&self, on: bool) {
        let bits = if on { INT_VRING } else { 0 };
        self.always.store(bits, Ordering::SeqCst);
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

    #[test]
    fn a_direct_irqfd_backend_keeps_the_vring_bit_until_switched_off() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.set_vring_always(true);
        // vhost writes the irqfd; the driver reads the status, then acks what it read.
        i.irq_evt().write(1).unwrap();
        assert_eq!(i.status(), INT_VRING);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_VRING, "still there for the next interrupt");
        i.signal_config_change().unwrap();
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        i.ack(INT_VRING | INT_CONFIG);
        assert_eq!(i.status(), INT_VRING);
        i.set_vring_always(false);
        assert_eq!(i.status(), 0);
    }
}
