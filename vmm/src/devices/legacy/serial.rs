//! COM1 (8250 UART at 0x3f8, IRQ 4): the guest console, written to a host `Write`.

use std::io::Write;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::super::bus::BusDevice;
use super::{byte_read, byte_write};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises an interrupt by writing to an eventfd that KVM turns into a GSI (irqfd).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The UART model is vm-superio's; this adapts it to the port bus.
pub struct Serial {
    uart: vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial").finish_non_exhaustive()
    }
}

impl Serial {
    pub fn new(irq: EventFdTrigger, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(irq, out),
        }
    }

    /// Flushes what the guest has written so far.
    pub fn flush(&mut self) {
        if let Err(e) = self.uart.writer_mut().flush() {
            log::warn!("serial: cannot flush console output: {e}");
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        byte_read(offset, data, |off| self.uart.read(off));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        byte_write(offset, data, |off, byte| {
            if let Err(e) = self.uart.write(off, byte) {
                log::warn!("serial: write to register {off} failed: {e:?}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_thr_reach_the_host() {
        let out = Shared::default();
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut serial = Serial::new(irq, Box::new(out.clone()));
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn wide_accesses_are_ignored_not_fatal() {
        let irq = EventFdTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut serial = Serial::new(irq, Box::new(std::io::sink()));
        let mut data = [0u8; 2];
        serial.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        serial.write(0, &[1, 2, 3, 4]);
    }
}
