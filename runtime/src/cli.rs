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
    /// Accepted for runc compatibility; cgroups live in the guest.
    #[arg(long = "systemd-cgroup", global = true)]
    pub systemd_cgroup: bool,
}

/// Flags `create` and `run` share.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Container id.
    pub id: String,
    /// The bundle directory (config.json and rootfs).
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// Unix socket that receives the pty master when process.terminal is set.
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    /// File to write the host process's pid to.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (the guest always pivots).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Extra fds to pass (only 0 is supported: host fds cannot enter the VM).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Return once the container started, instead of waiting for it.
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Keep the container's state after it exits.
    #[arg(long)]
    pub keep: bool,
    /// Accepted for runc compatibility.
    #[arg(long = "no-subreaper")]
    pub no_subreaper: bool,
}

#[derive(Debug, Args)]
pub struct IdArg {
    /// Container id.
    pub id: String,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    pub id: String,
    /// Signal name or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Signal every process of the container.
    #[arg(long, short = 'a')]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub id: String,
    /// Kill the container if it is still running.
    #[arg(long, short = 'f')]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub id: String,
    /// The command and its arguments (unless --process is given).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// A JSON file with the OCI process to run.
    #[arg(long, short = 'p')]
    pub process: Option<PathBuf>,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<PathBuf>,
    /// KEY=VALUE, repeatable.
    #[arg(long, short = 'e')]
    pub env: Vec<String>,
    /// Allocate a terminal.
    #[arg(long, short = 't')]
    pub tty: bool,
    /// UID[:GID].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Additional group ids, repeatable.
    #[arg(long = "additional-gids", short = 'g')]
    pub additional_gids: Vec<u32>,
    /// Capabilities to add, repeatable.
    #[arg(long, short = 'c')]
    pub cap: Vec<String>,
    #[arg(long = "no-new-privs")]
    pub no_new_privs: bool,
    /// Return once the process started.
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    #[arg(long = "process-label", hide = true)]
    pub process_label: Option<String>,
    #[arg(long, hide = true)]
    pub apparmor: Option<String>,
    #[arg(long = "ignore-paused", hide = true)]
    pub ignore_paused: bool,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// table or json.
    #[arg(long, short = 'f', default_value = "table")]
    pub format: String,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    pub id: String,
    #[command(flatten)]
    pub format: FormatArgs,
    /// ps options (ignored: the guest's processes are listed by runm).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ps_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub format: FormatArgs,
    /// Only the ids.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(long, short = 'b', default_value = ".")]
    pub bundle: PathBuf,
    /// A spec for rootless containers (not supported).
    #[arg(long)]
    pub rootless: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    pub id: String,
    /// Print one stats event and exit.
    #[arg(long)]
    pub stats: bool,
    /// How often to print stats, e.g. 5s or 500ms.
    #[arg(long, default_value = "5s")]
    pub interval: String,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    pub id: String,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExecHostArgs {
    pub id: String,
    pub exec_id: String,
    #[arg(long = "console-socket")]
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a bare microVM with the guest kernel and agent, and wait for it to stop
    /// (for debugging the VMM and guest image).
    #[command(hide = true)]
    Boot(BootArgs),
    /// Create a container: boot its microVM and set it up, ready for `start`.
    Create(CreateArgs),
    /// Start the process of a created container.
    Start(IdArg),
    /// Create and start a container, and wait for it (unless --detach).
    Run(RunArgs),
    /// Print a container's state (OCI state JSON).
    State(IdArg),
    /// Send a signal to a container's process.
    Kill(KillArgs),
    /// Delete a container and its microVM.
    Delete(DeleteArgs),
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// List a container's processes.
    Ps(PsArgs),
    /// List containers.
    List(ListArgs),
    /// Write a default config.json.
    Spec(SpecArgs),
    /// Freeze a container's processes.
    Pause(IdArg),
    /// Thaw a paused container.
    Resume(IdArg),
    /// Print a container's resource usage as events.
    Events(EventsArgs),
    /// Print what this runtime supports (JSON).
    Features,
    /// Check whether this host can run runm, and say what to do where it cannot.
    Check,
    /// The host process that owns a container's microVM (spawned by create).
    #[command(hide = true)]
    Sandbox(SandboxArgs),
    /// The host process of a detached exec (spawned by exec --detach).
    #[command(name = "exec-host", hide = true)]
    ExecHost(ExecHostArgs),
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
    /// Attach a virtio-fs device with mount tag TAG, served by the vhost-user backend
    /// (virtiofsd) already listening at SOCKET.
    #[arg(long = "fs", value_name = "TAG=SOCKET")]
    pub fs: Vec<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_style_invocations_parse() {
        for args in [
            &[
                "runm",
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "c1",
            ][..],
            &["runm", "spec", "--rootless"],
            &["runm", "exec", "-t", "c1", "sh", "-c", "ls -l"],
            &["runm", "kill", "--all", "c1", "KILL"],
            &["runm", "--systemd-cgroup", "delete", "-f", "c1"],
            &["runm", "--root", "/r", "check"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        let Command::Exec(e) = Cli::try_parse_from(["runm", "exec", "c1", "sh", "-c", "echo -n x"])
            .unwrap()
            .command
        else {
            panic!("exec");
        };
        assert_eq!(e.command, ["sh", "-c", "echo -n x"]);
    }
}
