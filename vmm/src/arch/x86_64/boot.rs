//! Loads the kernel, initramfs and command line, and writes the PVH start info.
//!
//! PVH is the boot protocol Firecracker and Cloud Hypervisor use for an ELF `vmlinux`:
//! the kernel starts in 32-bit protected mode at the address of its PVH ELF note, with
//! %ebx pointing to an `hvm_start_info` that lists memory, the command line and modules.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;

/// `hvm_start_info.magic`, from Xen's `arch-x86/hvm/start_info.h`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const PAGE_SIZE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel image {}: {source}", .path.display())]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel image {}: not a loadable ELF vmlinux: {source}", .path.display())]
    LoadKernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel image {}: no PVH entry point (build it with CONFIG_PVH=y)", .path.display())]
    NoPvhEntry { path: PathBuf },
    #[error("initramfs {}: {source}", .path.display())]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initramfs {} ({size} bytes) does not fit in guest memory above the kernel", .path.display())]
    InitrdTooBig { path: PathBuf, size: u64 },
    #[error("initramfs {}: cannot copy into guest memory: {source}", .path.display())]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("cannot write the kernel command line into guest memory: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    #[error("cannot write the PVH boot parameters: {0}")]
    WriteBootParams(#[from] linux_loader::configurator::Error),
}

/// What the vCPU needs to start the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub entry: GuestAddress,
    pub start_info: GuestAddress,
}

/// Loads everything the guest needs into `mem` and returns where to start.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, BootError> {
    let (entry, kernel_end) = load_kernel(mem, kernel)?;
    let module = initrd
        .map(|path| load_initrd(mem, path, kernel_end))
        .transpose()?;

    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE)?;
    cl.insert_str(cmdline)?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(BootError::WriteCmdline)?;

    write_start_info(mem, module)?;
    Ok(BootEntry {
        entry,
        start_info: GuestAddress(PVH_INFO_START),
    })
}

fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<(GuestAddress, u64), BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.into(),
        source,
    })?;
    let loaded =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::LoadKernel {
                path: path.into(),
                source,
            }
        })?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok((entry, loaded.kernel_end)),
        _ => Err(BootError::NoPvhEntry { path: path.into() }),
    }
}

/// Places the initramfs at the top of guest RAM, page aligned, clear of the kernel.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<hvm_modlist_entry, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.into(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::OpenInitrd {
            path: path.into(),
            source,
        })?
        .len();
    let too_big = || BootError::InitrdTooBig {
        path: path.into(),
        size,
    };
    let mem_end = mem.last_addr().raw_value() + 1;
    let start = mem_end
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(too_big)?;
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(|source| BootError::ReadInitrd {
            path: path.into(),
            source,
        })?;
    Ok(hvm_modlist_entry {
        paddr: start,
        size,
        ..Default::default()
    })
}

fn write_start_info(
    mem: &GuestMemoryMmap,
    module: Option<hvm_modlist_entry>,
) -> Result<(), BootError> {
    let mem_end = mem.last_addr().raw_value() + 1;
    let memmap = [
        hvm_memmap_table_entry {
            addr: 0,
            size: EBDA_START,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIMEM_START,
            size: mem_end - HIMEM_START,
            type_: E820_RAM,
            reserved: 0,
        },
    ];
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: MODLIST_START,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: 2,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if let Some(m) = module {
        params.set_modules(&[m], GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn guest_mem(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("runm-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        path
    }

    #[test]
    fn corrupt_kernel_is_rejected_with_its_path() {
        let path = temp_file("corrupt-vmlinux", &[0x42; 4096]);
        let err = load(&guest_mem(64), &path, None, "console=ttyS0").unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, BootError::LoadKernel { .. }), "{err}");
        assert!(err.to_string().contains("corrupt-vmlinux"), "{err}");
    }

    #[test]
    fn missing_kernel_is_rejected_with_its_path() {
        let err = load(&guest_mem(64), Path::new("/nonexistent/vmlinux"), None, "").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("kernel image /nonexistent/vmlinux"),
            "{err}"
        );
    }

    #[test]
    fn initrd_goes_to_the_top_of_memory_page_aligned() {
        let mem = guest_mem(64);
        let path = temp_file("initrd", &[7u8; 5000]);
        let m = load_initrd(&mem, &path, 0x200_0000).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(m.size, 5000);
        assert_eq!(m.paddr % PAGE_SIZE, 0);
        assert!(m.paddr + m.size <= 64 << 20);
        let mut buf = [0u8; 5000];
        mem.read_slice(&mut buf, GuestAddress(m.paddr)).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = guest_mem(64);
        let path = temp_file("big-initrd", &[0u8; 1 << 20]);
        let err = load_initrd(&mem, &path, (64 << 20) - 4096).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(err, BootError::InitrdTooBig { .. }), "{err}");
    }

    #[test]
    fn start_info_describes_memory_and_module() {
        let mem = guest_mem(64);
        let module = hvm_modlist_entry {
            paddr: 0x300_0000,
            size: 123,
            ..Default::default()
        };
        write_start_info(&mem, Some(module)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 123));
        let high: hvm_memmap_table_entry = mem.read_obj(GuestAddress(MEMMAP_START + 24)).unwrap();
        assert_eq!(high.addr + high.size, 64 << 20);
    }
}
