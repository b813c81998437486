//! `runm boot`: boot the guest image in a microVM, console on stdout. With the agent
//! (the default), wait until it answers a ping over vsock, print what it said, and ask it
//! to power the VM off; with `--no-agent`, wait for the guest to stop by itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use vmm::devices::virtio::block::BlockConfig;
use vmm::devices::virtio::fs::FsConfig;
use vmm::devices::virtio::vsock::VsockConfig;
use vmm::{ExitReason, VmConfig};

use crate::cli::BootArgs;
use crate::guest_assets::{self, Asset};
use crate::sandbox::Sandbox;

/// How long a guest has to power off after the agent said it would.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub fn run(args: BootArgs) -> anyhow::Result<i32> {
    let kernel = guest_assets::locate(Asset::Kernel, args.kernel)?;
    let initrd = guest_assets::locate(Asset::Initramfs, args.initrd)?;
    let disks = args
        .disks
        .iter()
        .map(|d| parse_disk(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fs = args
        .fs
        .iter()
        .map(|f| parse_fs(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut cmdline = vmm::config::DEFAULT_CMDLINE.to_string();
    if !args.kernel_log {
        cmdline.push_str(" quiet");
    }
    if !args.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&args.cmdline);
    }
    // A private directory for the socket, only when the caller did not name one; it
    // lives (and is removed) with `_scratch`.
    let (_scratch, uds_path) = match args.vsock_socket {
        Some(path) => (None, path),
        None => {
            let dir = ScratchDir::new()?;
            let path = dir.path.join("vsock.sock");
            (Some(dir), path)
        }
    };
    let config = VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline,
        vcpus: args.cpus,
        mem_mib: args.memory,
        serial_out: Box::new(std::io::stdout()),
        disks,
        vsock: Some(VsockConfig {
            guest_cid: args.cid,
            uds_path: uds_path.clone(),
        }),
        fs,
        net: Vec::new(),
    };
    log::debug!("booting {config:?}");
    let timeout = Duration::from_secs(args.timeout);
    let exit = if args.no_agent {
        let mut vm = vmm::start_microvm(config).context("cannot start the microVM")?;
        vm.wait(Some(timeout))?
    } else {
        let sandbox = Sandbox::start(config, timeout)?;
        let info = sandbox.agent_info();
        println!(
            "agent ready: runm-agent {} (protocol {}, kernel {})",
            info.agent_version, info.protocol_version, info.kernel
        );
        sandbox.stop(SHUTDOWN_GRACE)?
    };
    match exit {
        ExitReason::GuestShutdown => Ok(0),
        ExitReason::Killed => bail!("the microVM was stopped from the host"),
        crash @ (ExitReason::TripleFault
        | ExitReason::VcpuFailed { .. }
        | ExitReason::DevicesFailed { .. }) => bail!("{crash}"),
    }
}

/// `PATH` or `PATH,ro`.
fn parse_disk(spec: &str) -> anyhow::Result<BlockConfig> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((path, "ro")) => (path, true),
        Some((_, opt)) => bail!("--disk {spec}: unknown option {opt:?} (expected PATH or PATH,ro)"),
        None => (spec, false),
    };
    if path.is_empty() {
        bail!("--disk {spec}: empty path");
    }
    Ok(BlockConfig {
        path: PathBuf::from(path),
        read_only,
    })
}

/// `TAG=SOCKET` (the tag is checked with the rest of the VM's configuration).
fn parse_fs(spec: &str) -> anyhow::Result<FsConfig> {
    let Some((tag, socket)) = spec.split_once('=') else {
        bail!("--fs {spec}: expected TAG=SOCKET");
    };
    if socket.is_empty() {
        bail!("--fs {spec}: empty socket path");
    }
    Ok(FsConfig {
        tag: tag.to_string(),
        socket: PathBuf::from(socket),
    })
}

/// A private directory for the VM's sockets, removed when the command ends.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("runm-boot-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs() {
        let d = parse_disk("/a/b.img").unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/a/b.img"), false));
        let d = parse_disk("/a,b.img,ro").unwrap();
        assert_eq!((d.path, d.read_only), (PathBuf::from("/a,b.img"), true));
        let e = parse_disk("/a.img,rw").unwrap_err().to_string();
        assert!(e.contains("unknown option \"rw\""), "{e}");
        assert!(parse_disk(",ro").is_err());
    }

    #[test]
    fn fs_specs() {
        let f = parse_fs("shared=/run/v.sock").unwrap();
        assert_eq!(
            (f.tag.as_str(), f.socket),
            ("shared", PathBuf::from("/run/v.sock"))
        );
        let f = parse_fs("a=/b=c").unwrap();
        assert_eq!((f.tag.as_str(), f.socket), ("a", PathBuf::from("/b=c")));
        assert!(parse_fs("shared")
            .unwrap_err()
            .to_string()
            .contains("TAG=SOCKET"));
        assert!(parse_fs("shared=").is_err());
    }
}
