//! Command-line interface: runc's global flags, then one subcommand per verb.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "runm", version, about = "Run OCI containers in KVM microVMs")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// runc's global options.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = "/run/runm")]
    pub root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    pub log_format: String,
    /// Enable debug logging.
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a bare microVM with the guest kernel and agent, and wait for it to stop
    /// (for debugging the VMM and guest image).
    #[command(hide = true)]
    Boot(BootArgs),
}

#[derive(Debug, Args)]
pub struct BootArgs {
    /// Guest kernel (ELF vmlinux with a PVH entry point).
    #[arg(long, env = "RUNM_KERNEL")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with runm-agent as /init.
    #[arg(long, env = "RUNM_INITRD")]
    pub initrd: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory: u32,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u8,
    /// Extra kernel command-line parameters, appended to runm's.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Seconds to wait for the guest to stop before killing it.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Show the kernel's boot messages (drops `quiet`).
    #[arg(long)]
    pub kernel_log: bool,
    /// Attach a raw disk image as the next virtio-blk device (/dev/vda, /dev/vdb, ...);
    /// `PATH,ro` attaches it read-only.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    pub disks: Vec<String>,
    /// The VM's hybrid vsock Unix socket (default: a private temporary directory).
    #[arg(long, value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3)]
    pub cid: u32,
    /// Do not talk to the agent (for guests with another init): wait for the guest to
    /// stop by itself.
    #[arg(long)]
    pub no_agent: bool,
}
