//! What a caller asks for when it starts a microVM, checked before anything is created.

use std::io::Write;

use crate::devices::virtio::block::BlockConfig;
use crate::devices::virtio::fs::{FsConfig, TAG_LEN};
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
        self.validate_fs_tags()
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
