//! A guest driver's side of the virtio-mmio registers, for device tests that go through
//! the real transport.

use vm_memory::GuestAddress;

use super::mmio::MmioTransport;
use super::status;
use crate::devices::BusDevice;

/// Status after a successful feature negotiation.
pub const FEATURES_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

pub fn write_reg(t: &mut MmioTransport, reg: u64, value: u32) {
    t.write(reg, &value.to_le_bytes());
}

pub fn read_reg(t: &mut MmioTransport, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(reg, &mut b);
    u32::from_le_bytes(b)
}

/// The low and high halves of a 64-bit value, as the registers take them.
pub fn halves(v: u64) -> [u32; 2] {
    [
        u32::try_from(v & 0xffff_ffff).unwrap(),
        u32::try_from(v >> 32).unwrap(),
    ]
}

/// The features the device offers, both words.
pub fn device_features(t: &mut MmioTransport) -> u64 {
    [0u32, 1].iter().fold(0, |acc, &sel| {
        write_reg(t, 0x14, sel);
        acc | (u64::from(read_reg(t, 0x10)) << (32 * sel))
    })
}

/// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK: the status the device ends with.
pub fn negotiate(t: &mut MmioTransport, features: u64) -> u32 {
    write_reg(t, 0x70, status::ACKNOWLEDGE);
    write_reg(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    for (sel, word) in (0u32..).zip(halves(features)) {
        write_reg(t, 0x24, sel);
        write_reg(t, 0x20, word);
    }
    write_reg(t, 0x70, FEATURES_OK);
    read_reg(t, 0x70)
}

/// Sets queue `index` to `size` entries with its rings at `[desc, avail, used]`, ready.
pub fn setup_queue(t: &mut MmioTransport, index: u32, size: u16, rings: [GuestAddress; 3]) {
    write_reg(t, 0x30, index);
    write_reg(t, 0x38, u32::from(size));
    for (reg, addr) in [0x80, 0x90, 0xa0].into_iter().zip(rings) {
        let [lo, hi] = halves(addr.0);
        write_reg(t, reg, lo);
        write_reg(t, reg + 4, hi);
    }
    write_reg(t, 0x44, 1);
}

/// DRIVER_OK after a successful negotiation: the device activates.
pub fn driver_ok(t: &mut MmioTransport) {
    write_reg(t, 0x70, FEATURES_OK | status::DRIVER_OK);
}
