//! Guest RAM, populated by the host kernel on first touch, so an idle guest costs only the
//! pages it has used.
//!
//! Two backings:
//! - [`Backing::Anonymous`]: one anonymous private mapping, for VMs whose devices all live
//!   in this process.
//! - [`Backing::SharedMemfd`]: a `memfd` mapped `MAP_SHARED`, for VMs with a vhost-user
//!   device: its backend process maps the same fd (sent with `SET_MEM_TABLE`) to reach
//!   the rings and buffers. The memfd is sized with `ftruncate`, which allocates nothing.

use std::fs::File;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory size {0} does not fit in this host's address space")]
    TooBig(u64),
    #[error("cannot create the memfd for {size} bytes of shared guest memory: {source}")]
    Memfd { size: u64, source: std::io::Error },
}

/// What guest RAM is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Private to this process.
    Anonymous,
    /// A memfd that other processes (vhost-user backends) can map.
    SharedMemfd,
}

/// Creates guest RAM `[0, size)`.
pub fn create_guest_memory(size: u64, backing: Backing) -> Result<GuestMemoryMmap, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(size))?;
    let file = match backing {
        Backing::Anonymous => None,
        Backing::SharedMemfd => Some(FileOffset::new(shared_file(size)?, 0)),
    };
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), len, file)])
        .map_err(|source| MemoryError::Map { size, source })
}

/// An empty memfd of `size` bytes (a hole: no page is allocated until touched).
fn shared_file(size: u64) -> Result<File, MemoryError> {
    let memfd = |source: std::io::Error| MemoryError::Memfd { size, source };
    let fd = memfd_create(c"runm-guest-ram", MFdFlags::MFD_CLOEXEC).map_err(|e| memfd(e.into()))?;
    let file = File::from(fd);
    file.set_len(size).map_err(memfd)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileExt, MetadataExt};

    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    const SIZE: u64 = 4 << 20;

    #[test]
    fn anonymous_memory_has_no_file() {
        let mem = create_guest_memory(SIZE, Backing::Anonymous).unwrap();
        let region = mem.iter().next().unwrap();
        assert_eq!(region.len(), SIZE);
        assert!(region.file_offset().is_none());
    }

    #[test]
    fn memfd_memory_is_shared_with_its_fd() {
        let mem = create_guest_memory(SIZE, Backing::SharedMemfd).unwrap();
        assert_eq!(mem.iter().count(), 1);
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().expect("a memfd-backed region");
        assert_eq!(fo.start(), 0);
        let file = fo.file();
        assert_eq!(file.metadata().unwrap().len(), SIZE);

        // Guest writes are visible through the fd, and writes through the fd in guest
        // memory: the mapping is MAP_SHARED, as a vhost-user backend needs.
        mem.write_slice(b"from the guest", GuestAddress(0x1234))
            .unwrap();
        let mut buf = [0u8; 14];
        file.read_exact_at(&mut buf, 0x1234).unwrap();
        assert_eq!(&buf, b"from the guest");
        file.write_all_at(b"from the backend", SIZE - 16).unwrap();
        let mut back = [0u8; 16];
        mem.read_slice(&mut back, GuestAddress(SIZE - 16)).unwrap();
        assert_eq!(&back, b"from the backend");
    }

    #[test]
    fn memfd_memory_is_lazy() {
        let mem = create_guest_memory(64 << 20, Backing::SharedMemfd).unwrap();
        let file = mem.iter().next().unwrap().file_offset().unwrap().file();
        // st_blocks counts 512-byte units actually allocated.
        assert_eq!(file.metadata().unwrap().blocks(), 0);
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        assert!(file.metadata().unwrap().blocks() > 0);
    }
}
