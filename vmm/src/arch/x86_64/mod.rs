//! x86_64: guest physical layout, PVH boot, and the initial vCPU state.

pub mod boot;
pub mod cpuid;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
