//! The port I/O bus: routes a vCPU's IN/OUT exits to the device that owns the port.

use std::sync::{Arc, Mutex};

/// A device on the port I/O bus. `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("port range {base:#x}+{len} overlaps a device already on the bus")]
    Overlap { base: u16, len: u16 },
    #[error("port range {base:#x}+{len} is empty or wraps around")]
    BadRange { base: u16, len: u16 },
}

struct Entry {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

/// Maps port ranges to devices. Built once before the vCPUs start, then only read.
#[derive(Default)]
pub struct PioBus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl PioBus {
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.push(Entry { base, len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&Entry, u16)> {
        self.entries
            .iter()
            .find(|e| port >= e.base && port - e.base < e.len)
            .map(|e| (e, port - e.base))
    }

    /// Reads from `port`; an unclaimed port reads as all ones, like a floating ISA bus.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((e, offset)) => {
                lock(&e.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to `port`; a write to an unclaimed port is dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((e, offset)) => {
                lock(&e.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still usable: device
/// state is plain registers, and the VM is being torn down anyway.
fn lock(device: &Mutex<dyn PioDevice>) -> std::sync::MutexGuard<'_, dyn PioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(u8::try_from(offset).unwrap());
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_offset_and_floats_unclaimed_ports() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b, [0xff]);
        assert!(bus.write(0x3f8, &[0x41]));
        assert!(!bus.write(0x3f7, &[0x41]));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![0x41])]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::default();
        bus.insert(0x60, 5, dev.clone()).unwrap();
        assert!(matches!(
            bus.insert(0x64, 1, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x5c, 5, dev.clone()),
            Err(BusError::Overlap { .. })
        ));
        bus.insert(0x65, 1, dev.clone()).unwrap();
        assert!(matches!(
            bus.insert(0xfff0, 0x20, dev.clone()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x100, 0, dev),
            Err(BusError::BadRange { .. })
        ));
    }
}
