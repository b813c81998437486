//! Fixtures for the block tests: guest memory, disk images with a known pattern, and
//! chains laid out the way the Linux driver lays them out (header, data, status, each
//! in its own descriptor).

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::SECTOR_SIZE;

pub const MEM_SIZE: u64 = 0x100_0000;
/// Where tests put the header, the data and the status byte of a request; the queue
/// itself lives below 0x10_0000.
pub const HEADER: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const STATUS: u64 = 0x30_0000;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

pub fn guest_memory() -> GuestMemoryMmap {
    let len = usize::try_from(MEM_SIZE).unwrap();
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap()
}

/// The byte at `offset` of a fresh image: no two neighbouring sectors alike.
pub fn pattern(offset: u64) -> u8 {
    u8::try_from(offset % 251).unwrap()
}

/// A temporary image of `sectors` sectors filled with [`pattern`].
pub fn image(sectors: u64) -> TempFile {
    let tmp = TempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * SECTOR_SIZE).map(pattern).collect();
    std::fs::write(tmp.as_path(), data).unwrap();
    tmp
}

/// A driver-readable (device-reads) descriptor.
pub fn readable(addr: u64, len: u32) -> RawDescriptor {
    SplitDescriptor::new(addr, len, 0, 0).into()
}

/// A device-writable descriptor.
pub fn writable(addr: u64, len: u32) -> RawDescriptor {
    SplitDescriptor::new(addr, len, VRING_DESC_F_WRITE, 0).into()
}

/// Writes a request header at [`HEADER`].
pub fn write_header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(HEADER)).unwrap();
}

/// The usual chain: a 16-byte header, `data`, a 1-byte status.
pub fn with_header_and_status(data: &[RawDescriptor]) -> Vec<RawDescriptor> {
    let mut descs = vec![readable(HEADER, 16)];
    descs.extend_from_slice(data);
    descs.push(writable(STATUS, 1));
    descs
}

/// Links `descs` into one chain starting at descriptor `first` and makes it available.
pub fn add_chain(q: &MockSplitQueue<GuestMemoryMmap>, first: u16, descs: &[RawDescriptor]) {
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let d = SplitDescriptor::from(*d);
            let i = u16::try_from(i).unwrap();
            let (flags, next) = if usize::from(i) + 1 < descs.len() {
                (d.flags() | VRING_DESC_F_NEXT, first + i + 1)
            } else {
                (d.flags() & !VRING_DESC_F_NEXT, 0)
            };
            SplitDescriptor::new(d.addr().0, d.len(), flags, next).into()
        })
        .collect();
    q.add_desc_chains(&linked, first).unwrap();
}

/// The status byte at [`STATUS`].
pub fn status(mem: &GuestMemoryMmap) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

/// `len` bytes of guest memory at `addr`.
pub fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}
