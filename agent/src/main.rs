//! runm-agent: PID 1 of every runm microVM.
//!
//! It brings up the minimal guest userspace (proc, sys, dev, a console), says it is ready
//! on the serial console, and serves the host's requests over vsock until told to shut
//! down. As PID 1 it must never return (the kernel would panic): every path ends in
//! powering the VM off.

mod server;

use runm_agent::init;

fn main() {
    match init::setup() {
        Ok(()) => {
            println!("runm-agent ready (kernel {})", init::kernel_release());
            if let Err(e) = server::serve(runm_protocol::AGENT_PORT) {
                eprintln!("runm-agent: {e}");
            }
        }
        Err(e) => eprintln!("runm-agent: {e}"),
    }
    init::power_off();
}
