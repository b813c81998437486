//! Legacy PC devices: the serial console and the keyboard controller's reset line.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{EventFdTrigger, Serial};

/// Legacy device registers are single bytes: `read` gets the register offset; a wider
/// access (or an offset past 255) reads as all ones.
fn byte_read(offset: u64, data: &mut [u8], read: impl FnOnce(u8) -> u8) {
    match (u8::try_from(offset), data) {
        (Ok(off), [byte]) => *byte = read(off),
        (_, data) => data.fill(0xff),
    }
}

/// The write side of [`byte_read`]: other widths are dropped.
fn byte_write(offset: u64, data: &[u8], write: impl FnOnce(u8, u8)) {
    if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
        write(off, *byte);
    }
}
