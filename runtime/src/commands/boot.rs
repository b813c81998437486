//! `runm boot`: boot the guest image in a microVM, console on stdout, and wait for it.

use std::time::Duration;

use anyhow::{bail, Context};
use vmm::{ExitReason, VmConfig};

use crate::cli::BootArgs;
use crate::guest_assets::{self, Asset};

pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    let kernel = guest_assets::locate(Asset::Kernel, args.kernel)?;
    let initrd = guest_assets::locate(Asset::Initramfs, args.initrd)?;
    let mut cmdline = vmm::config::DEFAULT_CMDLINE.to_string();
    if !args.kernel_log {
        cmdline.push_str(" quiet");
    }
    if !args.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&args.cmdline);
    }
    let config = VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline,
        vcpus: args.cpus,
        mem_mib: args.memory,
        serial_out: Box::new(std::io::stdout()),
    };
    log::debug!("booting {config:?}");
    let mut vm = vmm::start_microvm(config).context("cannot start the microVM")?;
    match vm.wait(Some(Duration::from_secs(args.timeout)))? {
        ExitReason::GuestShutdown => Ok(0),
        ExitReason::Killed => bail!("the microVM was stopped from the host"),
        ExitReason::VcpuFailed { id, reason } => bail!("vCPU {id} failed: {reason}"),
    }
}
