//! Guest RAM: one anonymous private mapping, populated by the host kernel on first touch,
//! so an idle guest costs only the pages it has used.

use vm_memory::{GuestAddress, GuestMemoryMmap};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("guest memory size {0} does not fit in this host's address space")]
    TooBig(u64),
}

/// Creates guest RAM `[0, size)`.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let len = usize::try_from(size).map_err(|_| MemoryError::TooBig(size))?;
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)])
        .map_err(|source| MemoryError::Map { size, source })
}
