//! Legacy PC devices: the serial console and the keyboard controller's reset line.

pub mod i8042;
pub mod serial;

pub use i8042::I8042;
pub use serial::{EventFdTrigger, Serial};
