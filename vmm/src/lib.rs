//! runm's virtual machine monitor: boots a Linux microVM on KVM.
//!
//! The crate is organised the way the VM is: `arch` knows the x86_64 boot protocol,
//! `vstate` is the only place that talks to KVM, `devices` emulates what the guest sees,
//! and `builder` assembles them into a running [`Microvm`].

pub mod arch;
pub mod builder;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod microvm;
pub mod uds;
pub mod vstate;

pub use builder::{start_microvm, StartMicrovmError};
pub use config::{ConfigError, VmConfig};
pub use devices::virtio::net::{NetAttacher, NetBackend, NetConfig, NetError, Tap};
pub use microvm::{ExitReason, Microvm, MicrovmError, VmStopper};
