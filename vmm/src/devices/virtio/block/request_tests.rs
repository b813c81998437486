use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::devices::virtio::block::test_utils::*;
use crate::devices::virtio::block::QUEUE_SIZE;

const ALL: u64 = VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
const SECTORS: u64 = 16;

struct Fixture {
    mem: GuestMemoryMmap,
    img: TempFile,
    disk: Disk,
}

fn fixture() -> Fixture {
    fixture_with(false)
}

fn fixture_with(read_only: bool) -> Fixture {
    let img = image(SECTORS);
    let disk = Disk::open(img.as_path(), read_only).unwrap();
    Fixture {
        mem: guest_memory(),
        img,
        disk,
    }
}

impl Fixture {
    /// Runs one chain (laid out as given) with the features `features`.
    fn run_with(&self, descs: &[RawDescriptor], features: u64) -> Completion {
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let q = MockSplitQueue::new(&self.mem, QUEUE_SIZE);
        let chain = q.build_desc_chain(descs).unwrap();
        process(&self.mem, chain, &self.disk, features)
    }

    fn run(&self, descs: &[RawDescriptor]) -> Completion {
        self.run_with(descs, ALL)
    }

    /// Runs header + `data` + status, and checks the status byte the driver sees.
    fn request(&self, kind: u32, sector: u64, data: &[RawDescriptor]) -> Completion {
        write_header(&self.mem, kind, sector);
        let c = self.run(&with_header_and_status(data));
        assert_eq!(c.status, Some(status(&self.mem)), "{c:?}");
        c
    }

    fn image(&self) -> Vec<u8> {
        std::fs::read(self.img.as_path()).unwrap()
    }
}

fn fresh_image() -> Vec<u8> {
    (0..SECTORS * SECTOR_SIZE).map(pattern).collect()
}

fn sector_bytes(sector: u64, count: u64) -> Vec<u8> {
    let start = sector * SECTOR_SIZE;
    (start..start + count * SECTOR_SIZE).map(pattern).collect()
}

#[test]
fn read_fills_every_data_buffer() {
    let f = fixture();
    let c = f.request(
        VIRTIO_BLK_T_IN,
        3,
        &[writable(DATA, 512), writable(DATA + 0x1000, 1024)],
    );
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(c.used_len, 1536 + 1);
    let expected = sector_bytes(3, 3);
    assert_eq!(guest_bytes(&f.mem, DATA, 512), expected[..512]);
    assert_eq!(guest_bytes(&f.mem, DATA + 0x1000, 1024), expected[512..]);
}

#[test]
fn write_then_read_round_trips() {
    let f = fixture();
    let data: Vec<u8> = (0..1536u32).map(|i| (i % 7) as u8 + 1).collect();
    f.mem.write_slice(&data, GuestAddress(DATA)).unwrap();
    let c = f.request(
        VIRTIO_BLK_T_OUT,
        SECTORS - 3,
        &[readable(DATA, 1024), readable(DATA + 1024, 512)],
    );
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    assert_eq!(
        c.used_len, 1,
        "a write puts only the status into guest buffers"
    );

    let mut expected = fresh_image();
    expected[usize::try_from((SECTORS - 3) * SECTOR_SIZE).unwrap()..].copy_from_slice(&data);
    assert_eq!(f.image(), expected);

    let c = f.request(
        VIRTIO_BLK_T_IN,
        SECTORS - 3,
        &[writable(DATA + 0x8_0000, 1536)],
    );
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(guest_bytes(&f.mem, DATA + 0x8_0000, 1536), data);
}

#[test]
fn a_data_buffer_may_span_guest_memory_regions() {
    let img = image(SECTORS);
    let disk = Disk::open(img.as_path(), false).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x20_0000),
        (GuestAddress(0x20_0000), 0x20_0000),
    ])
    .unwrap();
    let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    // The buffer straddles 0x20_0000; STATUS lies past this memory, so move it.
    let descs = [
        readable(HEADER, 16),
        writable(0x1f_ff00, 512),
        writable(0x1f_0000, 1),
    ];
    let chain = q.build_desc_chain(&descs).unwrap();
    let c = process(&mem, chain, &disk, ALL);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    assert_eq!(guest_bytes(&mem, 0x1f_ff00, 512), sector_bytes(0, 1));
}

#[test]
fn flush_succeeds_with_only_a_status() {
    let f = fixture();
    let c = f.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(c.used_len, 1);
}

#[test]
fn get_id_writes_the_serial() {
    let f = fixture();
    let c = f.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 20)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(c.used_len, 21);
    assert_eq!(guest_bytes(&f.mem, DATA, 20), f.disk.id());
    assert_ne!(f.disk.id(), &[0; ID_BYTES]);

    // A short buffer gets what fits, a long one no more than 20 bytes.
    f.mem.write_slice(&[0xee; 40], GuestAddress(DATA)).unwrap();
    let c = f.request(VIRTIO_BLK_T_GET_ID, 0, &[writable(DATA, 8)]);
    assert_eq!(c.used_len, 9);
    assert_eq!(guest_bytes(&f.mem, DATA, 8), f.disk.id()[..8]);
    assert_eq!(guest_bytes(&f.mem, DATA + 8, 1), [0xee]);
    let c = f.request(
        VIRTIO_BLK_T_GET_ID,
        0,
        &[writable(DATA + 0x100, 12), writable(DATA + 0x200, 100)],
    );
    assert_eq!(c.used_len, 21);
    assert_eq!(guest_bytes(&f.mem, DATA + 0x100, 12), f.disk.id()[..12]);
    assert_eq!(guest_bytes(&f.mem, DATA + 0x200, 8), f.disk.id()[12..]);
}

fn write_ranges(mem: &GuestMemoryMmap, ranges: &[(u64, u32, u32)]) -> u32 {
    let mut raw = Vec::new();
    for &(sector, count, flags) in ranges {
        raw.extend_from_slice(&sector.to_le_bytes());
        raw.extend_from_slice(&count.to_le_bytes());
        raw.extend_from_slice(&flags.to_le_bytes());
    }
    mem.write_slice(&raw, GuestAddress(DATA)).unwrap();
    u32::try_from(raw.len()).unwrap()
}

#[test]
fn write_zeroes_zeroes_each_range() {
    let f = fixture();
    let len = write_ranges(
        &f.mem,
        &[
            (1, 2, 0),
            (8, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
            (9, 0, 0),
        ],
    );
    let c = f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(DATA, len)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    let mut expected = fresh_image();
    expected[512..3 * 512].fill(0);
    expected[8 * 512..9 * 512].fill(0);
    assert_eq!(f.image(), expected);
}

#[test]
fn discard_keeps_the_size_and_refuses_unmap() {
    let f = fixture();
    let len = write_ranges(&f.mem, &[(0, 8, 0), (12, 4, 0)]);
    let c = f.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, len)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    assert_eq!(
        f.image().len(),
        usize::try_from(SECTORS * SECTOR_SIZE).unwrap()
    );

    let len = write_ranges(&f.mem, &[(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP)]);
    let c = f.request(VIRTIO_BLK_T_DISCARD, 0, &[readable(DATA, len)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn bad_range_lists_are_refused_before_any_change() {
    let f = fixture();
    for (ranges, extra, expected) in [
        // Past the end, overflowing, too large, unknown flags.
        (vec![(0, 1, 0), (SECTORS, 1, 0)], 0, VIRTIO_BLK_S_IOERR),
        (vec![(u64::MAX, 2, 0)], 0, VIRTIO_BLK_S_IOERR),
        (
            vec![(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)],
            0,
            VIRTIO_BLK_S_IOERR,
        ),
        (vec![(0, 1, 0x2)], 0, VIRTIO_BLK_S_UNSUPP),
        // Not a whole number of ranges; more ranges than allowed.
        (vec![(0, 1, 0)], 1, VIRTIO_BLK_S_IOERR),
        (vec![(0, 1, 0); 17], 0, VIRTIO_BLK_S_IOERR),
    ] {
        let len = write_ranges(&f.mem, &ranges) + extra;
        let c = f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(DATA, len)]);
        assert_eq!(c.status, Some(expected), "{ranges:?}: {c:?}");
    }
    let c = f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(f.image(), fresh_image());
}

#[test]
fn discard_and_write_zeroes_need_the_feature() {
    let f = fixture();
    let len = write_ranges(&f.mem, &[(0, 1, 0)]);
    write_header(&f.mem, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    let descs = with_header_and_status(&[readable(DATA, len)]);
    let c = f.run_with(&descs, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_DISCARD);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP));
    write_header(&f.mem, VIRTIO_BLK_T_DISCARD, 0);
    let c = f.run_with(&descs, VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_WRITE_ZEROES);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP));
    assert_eq!(f.image(), fresh_image());
}

#[test]
fn unknown_types_are_unsupported() {
    let f = fixture();
    for kind in [2, 5, VIRTIO_BLK_T_GET_ID + 1, 14, u32::MAX] {
        let c = f.request(kind, 0, &[writable(DATA, 512)]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP), "type {kind}");
        assert_eq!(c.used_len, 1);
    }
}

#[test]
fn writes_to_a_read_only_disk_fail_and_change_nothing() {
    let f = fixture_with(true);
    f.mem.write_slice(&[0x11; 512], GuestAddress(DATA)).unwrap();
    let c = f.request(VIRTIO_BLK_T_OUT, 0, &[readable(DATA, 512)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert!(matches!(c.error, Some(RequestError::ReadOnly)), "{c:?}");
    // Even if the driver claims features the device never offered.
    let len = write_ranges(&f.mem, &[(0, 1, 0)]);
    let c = f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &[readable(DATA, len)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(f.image(), fresh_image());
    // Reads still work.
    let c = f.request(VIRTIO_BLK_T_IN, 1, &[writable(DATA, 512)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
}

#[test]
fn writes_are_durable_without_the_flush_feature() {
    let f = fixture();
    f.mem.write_slice(&[0x22; 512], GuestAddress(DATA)).unwrap();
    write_header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    let c = f.run_with(&with_header_and_status(&[readable(DATA, 512)]), 0);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(f.image()[..512], [0x22; 512]);
}

#[test]
fn sectors_past_the_end_are_refused() {
    let f = fixture();
    for (sector, len) in [
        (SECTORS, 512),
        (SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / 512 + 1, 512),
    ] {
        let c = f.request(VIRTIO_BLK_T_IN, sector, &[writable(DATA, len)]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR), "sector {sector}");
        assert!(
            matches!(c.error, Some(RequestError::OutOfRange { .. })),
            "{c:?}"
        );
        let c = f.request(VIRTIO_BLK_T_OUT, sector, &[readable(DATA, len)]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR), "sector {sector}");
    }
    assert_eq!(f.image(), fresh_image());
    // The last sector is fine.
    let c = f.request(VIRTIO_BLK_T_IN, SECTORS - 1, &[writable(DATA, 512)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
}

#[test]
fn lengths_must_be_whole_sectors() {
    let f = fixture();
    f.mem
        .write_slice(&[0x33; 1024], GuestAddress(DATA))
        .unwrap();
    for data in [
        vec![writable(DATA, 100)],
        vec![writable(DATA, 512), writable(DATA + 512, 511)],
        vec![],
    ] {
        let c = f.request(VIRTIO_BLK_T_IN, 0, &data);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR), "{data:?}");
        assert!(matches!(c.error, Some(RequestError::BadLength(_))), "{c:?}");
        assert_eq!(c.used_len, 1);
    }
    assert_eq!(guest_bytes(&f.mem, DATA, 1024), [0x33; 1024]);
    let c = f.request(VIRTIO_BLK_T_OUT, 0, &[readable(DATA, 1000)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(f.image(), fresh_image());
}

#[test]
fn headers_must_be_readable_and_16_bytes() {
    let f = fixture();
    write_header(&f.mem, VIRTIO_BLK_T_IN, 0);
    for header in [
        readable(HEADER, 8),
        readable(HEADER, 0),
        writable(HEADER, 16),
        readable(MEM_SIZE - 8, 16),
    ] {
        let c = f.run(&[header, writable(DATA, 512), writable(STATUS, 1)]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR), "{c:?}");
        assert_eq!(status(&f.mem), VIRTIO_BLK_S_IOERR);
    }
    // A longer header is fine: the rest is ignored.
    let c = f.run(&[
        readable(HEADER, 32),
        writable(DATA, 512),
        writable(STATUS, 1),
    ]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
}

#[test]
fn chains_without_a_place_for_the_status_get_no_answer() {
    let f = fixture();
    write_header(&f.mem, VIRTIO_BLK_T_IN, 0);
    for last in [
        readable(STATUS, 1),
        writable(STATUS, 0),
        writable(MEM_SIZE, 1),
        writable(u64::MAX, 1),
    ] {
        let c = f.run(&[readable(HEADER, 16), writable(DATA, 512), last]);
        assert_eq!(c.used_len, 0, "{c:?}");
        assert_eq!(c.status, None);
        assert!(matches!(c.error, Some(RequestError::NoStatus { .. })));
        assert_eq!(status(&f.mem), 0xff);
    }
    // The status is missing: the last descriptor is the data.
    f.mem.write_slice(&[0x44; 512], GuestAddress(DATA)).unwrap();
    write_header(&f.mem, VIRTIO_BLK_T_OUT, 0);
    let c = f.run(&[readable(HEADER, 16), readable(DATA, 512)]);
    assert_eq!(c.used_len, 0);
    assert_eq!(f.image(), fresh_image());
    // A lone header.
    let c = f.run(&[readable(HEADER, 16)]);
    assert_eq!(c.used_len, 0);
}

#[test]
fn a_lone_writable_descriptor_gets_an_error_status() {
    let f = fixture();
    let c = f.run(&[writable(STATUS, 16)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert!(matches!(c.error, Some(RequestError::NoHeader)), "{c:?}");
    assert_eq!(c.used_len, 1);
}

#[test]
fn data_outside_guest_memory_is_refused_before_any_io() {
    let f = fixture();
    for data in [
        writable(MEM_SIZE - 256, 512),
        writable(MEM_SIZE, 512),
        writable(u64::MAX - 100, 512),
    ] {
        let c = f.request(VIRTIO_BLK_T_IN, 0, &[writable(DATA, 512), data]);
        assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
        assert!(
            matches!(c.error, Some(RequestError::OutsideMemory { .. })),
            "{c:?}"
        );
        assert_eq!(c.used_len, 1);
    }
    // Nothing was read into the valid buffer either.
    assert_eq!(guest_bytes(&f.mem, DATA, 512), [0; 512]);
    let c = f.request(VIRTIO_BLK_T_OUT, 0, &[readable(MEM_SIZE - 256, 512)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert_eq!(f.image(), fresh_image());
}

#[test]
fn data_in_the_wrong_direction_is_refused() {
    let f = fixture();
    let c = f.request(VIRTIO_BLK_T_IN, 0, &[readable(DATA, 512)]);
    assert!(matches!(
        c.error,
        Some(RequestError::WrongDirection { index: 1 })
    ));
    f.mem
        .write_slice(&[0x55; 1024], GuestAddress(DATA))
        .unwrap();
    let c = f.request(
        VIRTIO_BLK_T_OUT,
        0,
        &[readable(DATA, 512), writable(DATA + 512, 512)],
    );
    assert!(matches!(
        c.error,
        Some(RequestError::WrongDirection { index: 2 })
    ));
    assert_eq!(f.image(), fresh_image());
    let c = f.request(VIRTIO_BLK_T_GET_ID, 0, &[readable(DATA, 20)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
}

#[test]
fn zero_length_data_descriptors_are_skipped() {
    let f = fixture();
    let c = f.request(
        VIRTIO_BLK_T_IN,
        2,
        &[
            writable(DATA, 0),
            writable(DATA + 0x1000, 512),
            writable(u64::MAX, 0),
        ],
    );
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    assert_eq!(c.used_len, 513);
    assert_eq!(guest_bytes(&f.mem, DATA + 0x1000, 512), sector_bytes(2, 1));
    // Only empty data is no data.
    let c = f.request(VIRTIO_BLK_T_IN, 0, &[writable(DATA, 0)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
}

#[test]
fn at_most_seg_max_data_descriptors() {
    let f = fixture();
    let n = usize::try_from(SEG_MAX).unwrap();
    // SEG_MAX buffers of 64 bytes: the whole disk, at the limit.
    let ok: Vec<_> = (0..n).map(|i| writable(DATA + 64 * i as u64, 64)).collect();
    let c = f.request(VIRTIO_BLK_T_IN, 0, &ok);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{c:?}");
    assert_eq!(guest_bytes(&f.mem, DATA, 8192), fresh_image());

    let too_many: Vec<_> = (0..=n).map(|_| writable(DATA, 0)).collect();
    let c = f.request(VIRTIO_BLK_T_IN, 0, &too_many);
    assert!(
        matches!(c.error, Some(RequestError::TooManySegments)),
        "{c:?}"
    );
    let c = f.request(VIRTIO_BLK_T_IN, 0, &too_many[1..]);
    assert!(matches!(c.error, Some(RequestError::BadLength(0))), "{c:?}");
}

#[test]
fn a_truncated_image_reads_as_an_io_error() {
    let f = fixture();
    f.img.as_file().set_len(SECTOR_SIZE + 100).unwrap();
    let c = f.request(
        VIRTIO_BLK_T_IN,
        0,
        &[writable(DATA, 512), writable(DATA + 0x1000, 512)],
    );
    assert_eq!(c.status, Some(VIRTIO_BLK_S_IOERR));
    assert!(matches!(c.error, Some(RequestError::Volatile(_))), "{c:?}");
    // The first sector arrived; the used length says so.
    assert_eq!(c.used_len, 513);
    assert_eq!(guest_bytes(&f.mem, DATA, 512), sector_bytes(0, 1));
}

#[test]
fn an_empty_chain_is_dropped() {
    let f = fixture();
    let c = process(&f.mem, std::iter::empty(), &f.disk, ALL);
    assert_eq!(c.used_len, 0);
    assert!(matches!(c.error, Some(RequestError::EmptyChain)));
}
