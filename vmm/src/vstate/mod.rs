//! VM state held in KVM: the VM, its memory and its vCPUs. The only modules that call
//! kvm-ioctls.

pub mod memory;
pub mod vcpu;
pub mod vm;
