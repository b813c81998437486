//! runm-agent: PID 1 of every runm microVM.
//!
//! For now it brings up the minimal guest userspace (proc, sys, dev, a console), says it
//! is ready on the serial console, and powers the VM off. As PID 1 it must never return:
//! the kernel would panic.

mod init;

fn main() {
    match init::setup() {
        Ok(()) => println!("runm-agent ready (kernel {})", init::kernel_release()),
        Err(e) => eprintln!("runm-agent: {e}"),
    }
    init::power_off();
}
