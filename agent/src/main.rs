//! runm-agent: PID 1 of every runm microVM.
//!
//! It brings up the guest userspace (proc, sys, dev, a console; off the initramfs onto a
//! tmpfs root; what containers need), says it is ready on the serial console, and serves
//! the host's requests over vsock until told to shut down. As PID 1 it must never return
//! (the kernel would panic): every path ends in powering the VM off.
//!
//! Run as `runm-agent __runm-helper OP RESULT` it is instead the short-lived helper that
//! drives libcontainer for the agent (see `helper.rs`).

mod server;

use std::sync::Arc;

use runm_agent::agent::Agent;
use runm_agent::reaper::{self, Reaper};
use runm_agent::{helper, init};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(helper::HELPER_ARG) {
        std::process::exit(helper::main(&args[2..]));
    }
    if let Err(e) = run() {
        eprintln!("runm-agent: {e}");
    }
    init::power_off();
}

fn run() -> Result<(), String> {
    init::setup().map_err(|e| e.to_string())?;
    if init::on_initramfs() {
        // Returns only if it failed; the agent goes on without containers then.
        let Err(e) = init::switch_root();
        eprintln!("runm-agent: {e}");
    }
    if let Err(e) = init::setup_containers() {
        eprintln!("runm-agent: {e}");
    }
    // Before any thread starts: the reaper waits for SIGCHLD with sigwait.
    reaper::block_sigchld().map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    let reaper = Reaper::start().map_err(|e| format!("cannot start the reaper: {e}"))?;
    println!("runm-agent ready (kernel {})", init::kernel_release());
    server::serve(runm_protocol::AGENT_PORT, Arc::new(Agent::new(reaper)))
        .map_err(|e| e.to_string())
}
