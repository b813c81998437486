//! One virtio-blk request (virtio 1.2 §5.2.6): a descriptor chain checked into a
//! [`Request`], then run against the [`Disk`].
//!
//! A chain is a readable 16-byte header (type, reserved, sector), data descriptors whose
//! direction depends on the type, and a final device-writable status byte. Everything
//! the guest wrote is checked before any I/O starts: descriptor directions and counts,
//! that every buffer lies in guest memory, lengths, and that the sectors lie within the
//! disk (with checked arithmetic). A chain with no place for a status byte cannot be
//! answered and is only returned to the used ring; anything else wrong gets an error
//! status.

use std::fs::File;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Bytes, GuestAddress, GuestMemory, GuestMemoryError, Permissions, ReadVolatile,
    VolatileMemoryError, WriteVolatile,
};

use super::{
    Disk, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, SECTOR_SIZE, SEG_MAX, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};

/// `struct virtio_blk_req` up to the data: le32 type, le32 reserved, le64 sector.
pub const HEADER_LEN: u32 = 16;
/// `struct virtio_blk_discard_write_zeroes`: le64 sector, le32 num_sectors, le32 flags.
pub const RANGE_LEN: usize = 16;
/// The header and the data descriptors of the largest chain we take (the status aside).
const MAX_HEAD_AND_DATA: usize = 1 + SEG_MAX as usize;
/// Room for the largest DISCARD or WRITE_ZEROES range list.
const MAX_RANGES_LEN: usize = RANGE_LEN * max_usize(MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SEG);

const fn max_usize(a: u32, b: u32) -> usize {
    if a > b {
        a as usize
    } else {
        b as usize
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("empty descriptor chain")]
    EmptyChain,
    #[error(
        "the last descriptor ({addr:#x}, {len} bytes) cannot hold the status: it must be \
         device-writable, at least 1 byte, in guest memory"
    )]
    NoStatus { addr: u64, len: u32 },
    #[error("no header descriptor")]
    NoHeader,
    #[error("the header descriptor ({len} bytes) must be device-readable and at least {HEADER_LEN} bytes")]
    BadHeader { len: u32 },
    #[error("cannot read the header: {0}")]
    ReadHeader(GuestMemoryError),
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("more than {SEG_MAX} data descriptors")]
    TooManySegments,
    #[error("data descriptor {index} has the wrong direction for this request")]
    WrongDirection { index: usize },
    #[error("data buffer {addr:#x}+{len:#x} is not in guest memory")]
    OutsideMemory { addr: u64, len: u32 },
    #[error("data length {0} is zero or not a multiple of {SECTOR_SIZE}")]
    BadLength(u64),
    #[error("sectors {sector}+{count} lie beyond the end of the disk ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        count: u64,
        capacity: u64,
    },
    #[error("range list of {0} bytes: not a whole, non-zero number of ranges within the limit")]
    BadRanges(u64),
    #[error("range of {sectors} sectors exceeds the limit of {max}")]
    RangeTooLarge { sectors: u32, max: u32 },
    #[error("range flags {0:#x} are not supported")]
    UnsupportedFlags(u32),
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("disk I/O: {0}")]
    Volatile(#[from] VolatileMemoryError),
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::UnsupportedFlags(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// A guest buffer, checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A DISCARD or WRITE_ZEROES range, in bytes, checked to lie within the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

/// What a valid request asks for. Offsets are in bytes and lie within the disk.
#[derive(Debug, PartialEq, Eq)]
pub enum Operation {
    Read { offset: u64, segments: Vec<Segment> },
    Write { offset: u64, segments: Vec<Segment> },
    Flush,
    GetId { segments: Vec<Segment> },
    Discard(Vec<Range>),
    WriteZeroes(Vec<Range>),
}

/// A chain with a place for its status byte: what it asks for, or why it cannot be done.
#[derive(Debug)]
pub struct Request {
    pub status: GuestAddress,
    pub op: Result<Operation, RequestError>,
}

/// How one chain ended, for the used ring and the device's log.
#[derive(Debug)]
pub struct Completion {
    /// Bytes written into the chain's buffers (data and status); 0 when there was no
    /// place for the status.
    pub used_len: u32,
    /// The status byte written, if one was.
    pub status: Option<u8>,
    pub error: Option<RequestError>,
}

/// Checks and runs one chain. `features` are those the driver accepted.
pub fn process<M, I>(mem: &M, chain: I, disk: &Disk, features: u64) -> Completion
where
    M: GuestMemory,
    I: IntoIterator<Item = Descriptor>,
{
    let request = match Request::parse(mem, chain, disk.sectors(), features) {
        Ok(request) => request,
        Err(e) => {
            return Completion {
                used_len: 0,
                status: None,
                error: Some(e),
            }
        }
    };
    let mut written = 0u64;
    let result = request
        .op
        .and_then(|op| op.execute(mem, disk, features, &mut written));
    let (status, error) = match result {
        Ok(()) => (VIRTIO_BLK_S_OK, None),
        Err(e) => (e.status(), Some(e)),
    };
    match mem.write_obj(status, request.status) {
        Ok(()) => Completion {
            used_len: u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX),
            status: Some(status),
            error,
        },
        // Checked while parsing, so only a changed memory map gets here.
        Err(e) => Completion {
            used_len: 0,
            status: None,
            error: Some(error.unwrap_or(RequestError::Memory(e))),
        },
    }
}

impl Request {
    /// Checks a chain against guest memory, a disk of `capacity` sectors and the
    /// accepted `features`. Fails only when the chain has no place for a status.
    pub fn parse<M, I>(
        mem: &M,
        chain: I,
        capacity: u64,
        features: u64,
    ) -> Result<Self, RequestError>
    where
        M: GuestMemory,
        I: IntoIterator<Item = Descriptor>,
    {
        // Walk the whole chain (bounded by the size of the queue, or of an indirect
        // table) to find the last descriptor, keeping at most a header and SEG_MAX data
        // descriptors.
        let mut head_and_data = Vec::new();
        let mut last = None;
        let mut too_many = false;
        for desc in chain {
            if let Some(prev) = last.replace(desc) {
                if head_and_data.len() < MAX_HEAD_AND_DATA {
                    head_and_data.push(prev);
                } else {
                    too_many = true;
                }
            }
        }
        let status = last.ok_or(RequestError::EmptyChain)?;
        if !status.is_write_only()
            || status.len() == 0
            || !mem.check_range(status.addr(), 1, Permissions::Write)
        {
            return Err(RequestError::NoStatus {
                addr: status.addr().0,
                len: status.len(),
            });
        }
        let op = if too_many {
            Err(RequestError::TooManySegments)
        } else {
            parse_op(mem, &head_and_data, capacity, features)
        };
        Ok(Self {
            status: status.addr(),
            op,
        })
    }
}

fn parse_op<M: GuestMemory>(
    mem: &M,
    head_and_data: &[Descriptor],
    capacity: u64,
    features: u64,
) -> Result<Operation, RequestError> {
    let (header, data) = head_and_data.split_first().ok_or(RequestError::NoHeader)?;
    if header.is_write_only() || header.len() < HEADER_LEN {
        return Err(RequestError::BadHeader { len: header.len() });
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr())
        .map_err(RequestError::ReadHeader)?;
    let kind = le_u32(&raw[0..4]);
    let sector = le_u64(&raw[8..16]);

    match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let device_writes = kind == VIRTIO_BLK_T_IN;
            let segments = segments(mem, data, device_writes)?;
            let len = total_len(&segments);
            if len == 0 || len % SECTOR_SIZE != 0 {
                return Err(RequestError::BadLength(len));
            }
            let offset = byte_range(sector, len / SECTOR_SIZE, capacity)?;
            Ok(if device_writes {
                Operation::Read { offset, segments }
            } else {
                Operation::Write { offset, segments }
            })
        }
        // Data descriptors of a flush carry nothing; ignore them.
        VIRTIO_BLK_T_FLUSH => Ok(Operation::Flush),
        VIRTIO_BLK_T_GET_ID => Ok(Operation::GetId {
            segments: segments(mem, data, true)?,
        }),
        VIRTIO_BLK_T_DISCARD if features & VIRTIO_BLK_F_DISCARD != 0 => {
            let ranges = ranges(mem, data, capacity, MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)?;
            // virtio 1.2 §5.2.6.2: a discard with the unmap flag is unsupported.
            if ranges.iter().any(|r| r.unmap) {
                return Err(RequestError::UnsupportedFlags(
                    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
                ));
            }
            Ok(Operation::Discard(ranges))
        }
        VIRTIO_BLK_T_WRITE_ZEROES if features & VIRTIO_BLK_F_WRITE_ZEROES != 0 => {
            Ok(Operation::WriteZeroes(ranges(
                mem,
                data,
                capacity,
                MAX_WRITE_ZEROES_SEG,
                MAX_WRITE_ZEROES_SECTORS,
            )?))
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The data descriptors as segments, all in the direction `device_writes` says and in
/// guest memory. Empty descriptors are dropped.
fn segments<M: GuestMemory>(
    mem: &M,
    data: &[Descriptor],
    device_writes: bool,
) -> Result<Vec<Segment>, RequestError> {
    let access = if device_writes {
        Permissions::Write
    } else {
        Permissions::Read
    };
    let mut segments = Vec::with_capacity(data.len());
    for (i, desc) in data.iter().enumerate() {
        if desc.is_write_only() != device_writes {
            return Err(RequestError::WrongDirection { index: i + 1 });
        }
        if desc.len() == 0 {
            continue;
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(RequestError::OutsideMemory {
                addr: desc.addr().0,
                len: desc.len(),
            });
        }
        segments.push(Segment {
            addr: desc.addr(),
            len: desc.len(),
        });
    }
    Ok(segments)
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

/// The byte offset of `count` sectors from `sector`, if they lie within the disk.
fn byte_range(sector: u64, count: u64, capacity: u64) -> Result<u64, RequestError> {
    let out_of_range = || RequestError::OutOfRange {
        sector,
        count,
        capacity,
    };
    let end = sector.checked_add(count).ok_or_else(out_of_range)?;
    if end > capacity {
        return Err(out_of_range());
    }
    // end <= capacity, which came from a file size in bytes: this cannot overflow.
    sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)
}

/// The range list of a DISCARD or WRITE_ZEROES request.
fn ranges<M: GuestMemory>(
    mem: &M,
    data: &[Descriptor],
    capacity: u64,
    max_ranges: u32,
    max_sectors: u32,
) -> Result<Vec<Range>, RequestError> {
    let segments = segments(mem, data, false)?;
    let len = total_len(&segments);
    let max_len = u64::from(max_ranges) * RANGE_LEN as u64;
    if len == 0 || len % RANGE_LEN as u64 != 0 || len > max_len {
        return Err(RequestError::BadRanges(len));
    }
    let mut raw = [0u8; MAX_RANGES_LEN];
    let mut pos = 0;
    for s in &segments {
        let end = pos + s.len as usize;
        mem.read_slice(&mut raw[pos..end], s.addr)?;
        pos = end;
    }
    raw[..pos]
        .chunks_exact(RANGE_LEN)
        .map(|r| {
            let sector = le_u64(&r[0..8]);
            let sectors = le_u32(&r[8..12]);
            let flags = le_u32(&r[12..16]);
            if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                return Err(RequestError::UnsupportedFlags(flags));
            }
            if sectors > max_sectors {
                return Err(RequestError::RangeTooLarge {
                    sectors,
                    max: max_sectors,
                });
            }
            Ok(Range {
                offset: byte_range(sector, u64::from(sectors), capacity)?,
                len: u64::from(sectors) * SECTOR_SIZE,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            })
        })
        .collect()
}

/// Little-endian integers from slices of exactly their size (callers slice constant
/// ranges of fixed-size arrays, so the fallback is never taken).
fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap_or_default())
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or_default())
}

impl Operation {
    /// Runs a checked request; `written` counts the bytes put into guest buffers, also
    /// when it fails half-way.
    pub fn execute<M: GuestMemory>(
        &self,
        mem: &M,
        disk: &Disk,
        features: u64,
        written: &mut u64,
    ) -> Result<(), RequestError> {
        match self {
            Self::Read { offset, segments } => {
                let mut file = disk.file_at(*offset)?;
                for s in segments {
                    read_segment(mem, &mut file, *s, written)?;
                }
                Ok(())
            }
            Self::Write { offset, segments } => {
                if disk.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let mut file = disk.file_at(*offset)?;
                for s in segments {
                    write_segment(mem, &mut file, *s)?;
                }
                // Without FLUSH the driver expects each write to be durable.
                if features & VIRTIO_BLK_F_FLUSH == 0 {
                    disk.flush()?;
                }
                Ok(())
            }
            Self::Flush => Ok(disk.flush()?),
            Self::GetId { segments } => {
                let id = disk.id();
                let mut pos = 0;
                for s in segments {
                    let n = (s.len as usize).min(ID_BYTES - pos);
                    mem.write_slice(&id[pos..pos + n], s.addr)?;
                    pos += n;
                    *written += n as u64;
                    if pos == ID_BYTES {
                        break;
                    }
                }
                Ok(())
            }
            Self::Discard(ranges) | Self::WriteZeroes(ranges) => {
                if disk.read_only() {
                    return Err(RequestError::ReadOnly);
                }
                let zero = matches!(self, Self::WriteZeroes(_));
                for r in ranges.iter().filter(|r| r.len > 0) {
                    if zero {
                        disk.write_zeroes(r.offset, r.len, r.unmap)?;
                    } else {
                        disk.discard(r.offset, r.len)?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Reads from the file's position straight into one guest buffer.
fn read_segment<M: GuestMemory>(
    mem: &M,
    file: &mut &File,
    s: Segment,
    written: &mut u64,
) -> Result<(), RequestError> {
    for slice in mem.get_slices(s.addr, s.len as usize, Permissions::Write)? {
        let mut slice = slice?;
        file.read_exact_volatile(&mut slice)?;
        *written += slice.len() as u64;
    }
    Ok(())
}

/// Writes one guest buffer at the file's position.
fn write_segment<M: GuestMemory>(
    mem: &M,
    file: &mut &File,
    s: Segment,
) -> Result<(), RequestError> {
    for slice in mem.get_slices(s.addr, s.len as usize, Permissions::Read)? {
        file.write_all_volatile(&slice?)?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
