//! Devices the guest sees.

pub mod bus;
pub mod legacy;

pub use bus::{BusError, PioBus, PioDevice};
