//! What a caller asks for when it starts a microVM, checked before anything is created.

use std::io::Write;

use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::fs::{FsConfig, TAG_LEN};
use crate::devices::virtio::net::NetConfig;
use crate::devices::virtio::vsock::VsockConfig;
use std::path::{Path, PathBuf};

/// The smallest guest that can hold our kernel (loaded at 16 MiB), its initramfs and a
/// working userspace.
pub const MIN_MEM_MIB: u32 = 64;
/// Guest RAM sits below the 32-bit MMIO hole, which keeps the memory map one region.
pub const MAX_MEM_MIB: u32 = 3 * 1024;
/// vCPUs the guest kernel is built for (CONFIG_NR_CPUS).
pub const MAX_VCPUS: u8 = 32;

/// The kernel parameters this VMM's device model needs: the console on COM1, reboot
/// through the i8042 (which ends the VM), an immediate reboot on panic, and no PCI.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule";

/// Errors in a [`VmConfig`]; each names the field and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("memory size {0} MiB is out of range: expected {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB")]
    MemSize(u32),
    #[error("vCPU count {0} is out of range: expected 1..={MAX_VCPUS}")]
    VcpuCount(u8),
    #[error("kernel image {}: {source}", .path.display())]
    Kernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {}: {source}", .path.display())]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("fs[{index}].tag {tag:?} {why}")]
    FsTag {
        index: usize,
        tag: String,
        why: FsTagProblem,
    },
    #[error("net[{index}].mac {} {why}", format_mac(.mac))]
    NetMac {
        index: usize,
        mac: [u8; 6],
        why: NetMacProblem,
    },
}

/// What is wrong with a virtio-net MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NetMacProblem {
    #[error("is a multicast address (the low bit of the first byte is set)")]
    Multicast,
    #[error("is all zeroes")]
    Zero,
    #[error("is used by another virtio-net device")]
    Duplicate,
}

/// `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What is wrong with a virtio-fs tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsTagProblem {
    #[error("is empty")]
    Empty,
    #[error("is longer than {TAG_LEN} bytes")]
    TooLong,
    #[error("is used by another virtio-fs device")]
    Duplicate,
}

/// Everything needed to boot one microVM.
pub struct VmConfig {
    /// ELF `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// Uncompressed or compressed initramfs (cpio), handed to the kernel as-is.
    pub initrd: Option<PathBuf>,
    /// Kernel command line; the builder appends the virtio-mmio device declarations.
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u32,
    /// Where the guest's serial console goes.
    pub serial_out: Box<dyn Write + Send>,
    /// Raw disk images, attached in order as virtio-blk devices (/dev/vda, /dev/vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// A virtio-vsock device whose host side is a Unix socket (hybrid vsock).
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, each served by a vhost-user backend (virtiofsd) that must be
    /// listening on its socket when the VM starts. With any of them, guest RAM is a
    /// shared memfd.
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, attached after every other device, each with its tap or
    /// without one yet (its link down until `Microvm::net_attacher` gives it one).
    pub net: Vec<NetConfig>,
}

impl std::fmt::Debug for VmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmConfig")
            .field("kernel", &self.kernel)
            .field("initrd", &self.initrd)
            .field("cmdline", &self.cmdline)
            .field("vcpus", &self.vcpus)
            .field("mem_mib", &self.mem_mib)
            .field("disks", &self.disks)
            .field("vsock", &self.vsock)
            .field("fs", &self.fs)
            .field("net", &self.net)
            .finish_non_exhaustive()
    }
}

impl VmConfig {
    /// Checks sizes and that the image files can be opened, so that a mistake is reported
    /// before any KVM object exists.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::MemSize(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpus));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        check_readable_file(&self.kernel).map_err(|source| ConfigError::Kernel {
            path: self.kernel.clone(),
            source,
        })?;
        if let Some(initrd) = &self.initrd {
            check_readable_file(initrd).map_err(|source| ConfigError::Initrd {
                path: initrd.clone(),
                source,
            })?;
        }
        self.validate_fs_tags()?;
        self.validate_net_macs()
    }

    /// MACs must be unicast, not zero, and one per device.
    fn validate_net_macs(&self) -> Result<(), ConfigError> {
        for (index, net) in self.net.iter().enumerate() {
            let mac = net.mac;
            let why = if mac == [0; 6] {
                Some(NetMacProblem::Zero)
            } else if mac[0] & 1 != 0 {
                Some(NetMacProblem::Multicast)
            } else if self.net[..index].iter().any(|other| other.mac == mac) {
                Some(NetMacProblem::Duplicate)
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ConfigError::NetMac { index, mac, why });
            }
        }
        Ok(())
    }

    /// Tags are what the guest mounts by: 1 to 36 bytes, one device each.
    fn validate_fs_tags(&self) -> Result<(), ConfigError> {
        for (index, fs) in self.fs.iter().enumerate() {
            let why = if fs.tag.is_empty() {
                Some(FsTagProblem::Empty)
            } else if fs.tag.len() > TAG_LEN {
                Some(FsTagProblem::TooLong)
            } else if self.fs[..index].iter().any(|other| other.tag == fs.tag) {
                Some(FsTagProblem::Duplicate)
            } else {
                None
            };
            if let Some(why) = why {
                return Err(ConfigError::FsTag {
                    index,
                    tag: fs.tag.clone(),
                    why,
                });
            }
        }
        Ok(())
    }

    /// Guest memory size in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }
}

fn check_readable_file(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    std::fs::File::open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kernel: &Path) -> VmConfig {
        VmConfig {
            kernel: kernel.to_path_buf(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            mem_mib: 128,
            serial_out: Box::new(std::io::sink()),
            disks: Vec::new(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
        }
    }

    fn net(mac: [u8; 6]) -> NetConfig {
        NetConfig {
            mac,
            tap: None,
            backend: crate::devices::virtio::net::NetBackend::default(),
        }
    }

    #[test]
    fn net_macs_are_checked_naming_the_device() {
        let mut c = config(Path::new("/proc/self/exe"));
        let a = [0x02, 0, 0, 0, 0, 1];
        let b = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        c.net = vec![net(a), net(b)];
        c.validate().unwrap();

        let cases = [
            (
                vec![net(a), net([0x03, 0, 0, 0, 0, 1])],
                1,
                NetMacProblem::Multicast,
                "net[1].mac 03:00:00:00:00:01 is a multicast address",
            ),
            (
                vec![net([0xff; 6])],
                0,
                NetMacProblem::Multicast,
                "net[0].mac ff:ff:ff:ff:ff:ff is a multicast address",
            ),
            (
                vec![net([0; 6])],
                0,
                NetMacProblem::Zero,
                "net[0].mac 00:00:00:00:00:00 is all zeroes",
            ),
            (
                vec![net(a), net(b), net(a)],
                2,
                NetMacProblem::Duplicate,
                "net[2].mac 02:00:00:00:00:01 is used by another virtio-net device",
            ),
        ];
        for (devices, at, problem, text) in cases {
            c.net = devices;
            let err = c.validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::NetMac { index, why, .. } if *index == at && *why == problem),
                "{err}"
            );
            assert!(err.to_string().starts_with(text), "{err}");
        }
    }

    fn fs(tag: &str) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            socket: "/run/virtiofsd.sock".into(),
        }
    }

    #[test]
    fn fs_tags_are_checked_naming_the_device() {
        let mut c = config(Path::new("/proc/self/exe"));
        c.fs = vec![fs("a"), fs(&"x".repeat(TAG_LEN)), fs("b")];
        c.validate().unwrap();

        let cases = [
            (
                vec![fs("a"), fs("")],
                1,
                FsTagProblem::Empty,
                "fs[1].tag \"\" is empty",
            ),
            (
                vec![fs(&"y".repeat(TAG_LEN + 1))],
                0,
                FsTagProblem::TooLong,
                "is longer than 36 bytes",
            ),
            (
                vec![fs("a"), fs("b"), fs("a")],
                2,
                FsTagProblem::Duplicate,
                "fs[2].tag \"a\" is used by another virtio-fs device",
            ),
        ];
        for (devices, at, problem, text) in cases {
            c.fs = devices;
            let err = c.validate().unwrap_err();
            assert!(
                matches!(&err, ConfigError::FsTag { index, why, .. } if *index == at && *why == problem),
                "{err}"
            );
            assert!(err.to_string().contains(text), "{err}");
        }
    }

    #[test]
    fn a_multibyte_tag_is_measured_in_bytes() {
        let mut c = config(Path::new("/proc/self/exe"));
        // 18 two-byte characters fill the 36 bytes; one more does not fit.
        c.fs = vec![fs(&"é".repeat(18))];
        c.validate().unwrap();
        c.fs = vec![fs(&"é".repeat(19))];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::FsTag {
                why: FsTagProblem::TooLong,
                ..
            })
        ));
    }

    #[test]
    fn rejects_zero_memory_naming_the_value() {
        let mut c = config(Path::new("/proc/self/exe"));
        c.mem_mib = 0;
        let err = c.validate().unwrap_err();
        assert!(matches!(err, ConfigError::MemSize(0)));
        assert!(err.to_string().contains("memory size 0 MiB"), "{err}");
    }

    #[test]
    fn rejects_bad_vcpu_counts() {
        for n in [0, MAX_VCPUS + 1] {
            let mut c = config(Path::new("/proc/self/exe"));
            c.vcpus = n;
            assert!(matches!(c.validate(), Err(ConfigError::VcpuCount(v)) if v == n));
        }
    }

    #[test]
    fn missing_kernel_names_the_file() {
        let c = config(Path::new("/nonexistent/vmlinux"));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
    }

    #[test]
    fn missing_initrd_names_the_file() {
        let mut c = config(Path::new("/proc/self/exe"));
        c.initrd = Some("/nonexistent/initramfs.cpio".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.starts_with("initramfs /nonexistent/initramfs.cpio"),
            "{err}"
        );
    }

    #[test]
    fn directory_is_not_a_kernel() {
        let c = config(Path::new("/"));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }
}
