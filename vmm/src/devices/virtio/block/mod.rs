//! virtio-blk (virtio 1.2 §5.2): a raw disk image as the guest's block device.
//!
//! `device.rs` is the virtio device (features, configuration space, activation) and
//! drains its one queue; `request.rs` turns one descriptor chain into a checked
//! [`request::Request`] and runs it against the [`Disk`], knowing nothing of queues or
//! event loops; `event_handler.rs` is the glue to the VM's device thread.
//!
//! The device loop is single-threaded, so file I/O is a seek followed by a read or write
//! straight between the file and guest memory (no bounce buffers).

pub mod device;
pub mod event_handler;
pub mod request;
#[cfg(test)]
mod test_utils;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::fallocate::{fallocate, FallocateMode};

pub use device::Block;

/// Sectors are 512 bytes whatever the block size (virtio 1.2 §5.2.6).
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// The block size the guest is told (VIRTIO_BLK_F_BLK_SIZE).
pub const BLK_SIZE: u32 = 512;

/// The one request queue and its maximum size.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request; with the header and status it fits a queue of 256.
pub const SEG_MAX: u32 = 128;
/// Length of the GET_ID string.
pub const ID_BYTES: usize = 20;
/// Limits of one DISCARD / WRITE_ZEROES request: sectors per range, ranges per request.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 16;
/// Discard granularity, in sectors: the 4 KiB block of most host filesystems.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 22;
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;

/// Feature bits (virtio 1.2 §5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << 14;

/// Request types (virtio 1.2 §5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Request status bytes.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The one flag of a DISCARD / WRITE_ZEROES range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk image {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the size of disk image {path}: {source}")]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the activation eventfd: {0}")]
    EventFd(std::io::Error),
}

/// What the VMM configures for one block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// A raw disk image (or a host block device).
    pub path: PathBuf,
    pub read_only: bool,
}

/// The backing file of a block device, addressed in 512-byte sectors.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Opens the image read-write, or read-only. A size that is not a whole number of
    /// sectors is rounded down: the tail is invisible to the guest.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_owned(),
                source,
            })?;
        // Seeking to the end also sizes host block devices, whose metadata says 0.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_owned(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "virtio-blk {}: size {size} is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let id = match file.metadata() {
            Ok(meta) => device_id(meta.dev(), meta.ino()),
            Err(e) => {
                log::warn!(
                    "virtio-blk {}: no device id (cannot stat: {e})",
                    path.display()
                );
                [0; ID_BYTES]
            }
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            sectors: size >> SECTOR_SHIFT,
            read_only,
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID string: NUL-padded ASCII naming the image by device and inode.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The file, positioned at `offset`, for one read or write.
    fn file_at(&self, offset: u64) -> std::io::Result<&File> {
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset))?;
        Ok(file)
    }

    /// Makes the data written so far durable.
    pub fn flush(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates a byte range. Discard is a hint: a file system that cannot punch
    /// holes leaves the data as it is.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        match fallocate(&self.file, FallocateMode::PunchHole, true, offset, len) {
            Err(e) if e.errno() == libc::EOPNOTSUPP => Ok(()),
            r => r.map_err(std::io::Error::from),
        }
    }

    /// Makes a byte range read as zeroes, deallocating it if `unmap` allows, falling
    /// back to writing zeroes where the file system cannot do better.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        let modes = if unmap {
            [FallocateMode::PunchHole, FallocateMode::ZeroRange]
        } else {
            [FallocateMode::ZeroRange, FallocateMode::PunchHole]
        };
        for mode in modes {
            match fallocate(&self.file, mode, true, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if e.errno() == libc::EOPNOTSUPP => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.write_zeroes_by_hand(offset, len)
    }

    fn write_zeroes_by_hand(&self, offset: u64, len: u64) -> std::io::Result<()> {
        static ZEROES: [u8; 64 << 10] = [0; 64 << 10];
        let mut done = 0u64;
        while done < len {
            let n = usize::try_from(len - done).map_or(ZEROES.len(), |n| n.min(ZEROES.len()));
            self.file.write_all_at(&ZEROES[..n], offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `<dev>-<ino>` in hex, cut to 20 bytes and NUL-padded.
fn device_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let s = format!("{dev:x}-{ino:x}");
    let n = s.len().min(ID_BYTES);
    id[..n].copy_from_slice(&s.as_bytes()[..n]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn open_reports_the_path() {
        let err = Disk::open(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/disk.img"), "{err}");
    }

    #[test]
    fn capacity_rounds_down_to_whole_sectors() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(3 * SECTOR_SIZE + 100).unwrap();
        let disk = Disk::open(tmp.as_path(), true).unwrap();
        assert_eq!(disk.sectors(), 3);
        assert!(disk.read_only());
    }

    #[test]
    fn read_only_images_are_opened_read_only() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().set_len(SECTOR_SIZE).unwrap();
        let disk = Disk::open(tmp.as_path(), true).unwrap();
        assert!(disk.file_at(0).unwrap().write(b"x").is_err());
    }

    #[test]
    fn id_names_device_and_inode() {
        assert_eq!(
            &device_id(0x803, 0x1234),
            b"803-1234\0\0\0\0\0\0\0\0\0\0\0\0"
        );
        let long = device_id(u64::MAX, u64::MAX);
        assert_eq!(&long[..], "ffffffffffffffff-fff".as_bytes());
    }

    #[test]
    fn write_zeroes_zeroes_with_and_without_unmap() {
        let tmp = TempFile::new().unwrap();
        tmp.as_file().write_all(&[0xaa; 3 * 4096]).unwrap();
        let disk = Disk::open(tmp.as_path(), false).unwrap();
        disk.write_zeroes(100, 5000, false).unwrap();
        disk.write_zeroes(8192, 4096, true).unwrap();
        disk.write_zeroes_by_hand(6000, 10).unwrap();
        let data = std::fs::read(tmp.as_path()).unwrap();
        assert_eq!(data.len(), 3 * 4096);
        assert!(data[..100].iter().all(|&b| b == 0xaa));
        assert!(data[100..5100].iter().all(|&b| b == 0));
        assert!(data[5100..6000].iter().all(|&b| b == 0xaa));
        assert!(data[6000..6010].iter().all(|&b| b == 0));
        assert!(data[6010..8192].iter().all(|&b| b == 0xaa));
        assert!(data[8192..].iter().all(|&b| b == 0));
    }
}
