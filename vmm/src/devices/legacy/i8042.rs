//! The i8042 keyboard controller, only for its CPU reset line: the guest runs with
//! `reboot=k`, so a reboot or `panic=-1` writes 0xfe to port 0x64 and the VM stops.

use vm_superio::{I8042Device, Trigger};

use super::super::bus::BusDevice;
use super::{byte_read, byte_write};

pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;

#[derive(Debug)]
pub struct I8042<T: Trigger> {
    dev: I8042Device<T>,
}

impl<T: Trigger> I8042<T> {
    pub fn new(reset: T) -> Self {
        Self {
            dev: I8042Device::new(reset),
        }
    }
}

impl<T: Trigger + Send> BusDevice for I8042<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        byte_read(offset, data, |off| self.dev.read(off));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        byte_write(offset, data, |off, byte| {
            if let Err(e) = self.dev.write(off, byte) {
                log::warn!("i8042: cannot signal CPU reset: {e:?}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicU32>);
    impl Trigger for Count {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[test]
    fn only_the_reset_command_on_the_command_port_resets() {
        let hits = Arc::new(AtomicU32::new(0));
        let mut dev = I8042::new(Count(hits.clone()));
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        dev.write(4, &[0xfe, 0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        dev.write(4, &[0xfe]);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0], "status reads as an idle controller");
    }
}
