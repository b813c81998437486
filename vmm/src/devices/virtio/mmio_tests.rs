use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::test_utils::{self, negotiate, read_reg, write_reg};
use crate::devices::virtio::{read_config_bytes, ActivateError, VIRTIO_RING_F_EVENT_IDX};

const FEATURE_X: u64 = 1 << 5;

#[derive(Default)]
struct Dummy {
    activations: Vec<(usize, u64)>,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn avail_features(&self) -> u64 {
        FEATURE_X | VIRTIO_RING_F_EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&[0xaa, 0xbb], offset, data);
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.activations.push((a.queues.len(), a.acked_features));
        Ok(())
    }
}

struct Fixture {
    mem: GuestMemoryMmap,
    dev: Arc<Mutex<Dummy>>,
    t: MmioTransport,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let dev = Arc::new(Mutex::new(Dummy::default()));
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let t = MmioTransport::new(dev.clone(), mem.clone(), irq).unwrap();
    Fixture { mem, dev, t }
}

fn rd(t: &mut MmioTransport, off: u64) -> u32 {
    read_reg(t, off)
}

fn wr(t: &mut MmioTransport, off: u64, v: u32) {
    write_reg(t, off, v);
}

fn setup_queue(t: &mut MmioTransport, index: u32, q: &MockSplitQueue<GuestMemoryMmap>) {
    let rings = [q.desc_table_addr(), q.avail_addr(), q.used_addr()];
    test_utils::setup_queue(t, index, 16, rings);
}

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identifies_as_a_modern_virtio_mmio_device() {
    let mut f = fixture();
    assert_eq!(rd(&mut f.t, 0x0), MAGIC);
    assert_eq!(rd(&mut f.t, 0x4), 2);
    assert_eq!(rd(&mut f.t, 0x8), 42);
    wr(&mut f.t, 0x14, 1);
    assert_eq!(rd(&mut f.t, 0x10), 1, "VERSION_1 is offered in word 1");
    wr(&mut f.t, 0x30, 1);
    assert_eq!(rd(&mut f.t, 0x34), 16);
    wr(&mut f.t, 0x30, 7);
    assert_eq!(
        rd(&mut f.t, 0x34),
        0,
        "a queue that does not exist has size 0"
    );
}

#[test]
fn activation_hands_over_the_ready_queues() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1 | FEATURE_X);
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), 16);
    setup_queue(&mut f.t, 0, &q);
    wr(&mut f.t, 0x70, ALL_OK);
    assert_eq!(rd(&mut f.t, 0x70), ALL_OK);
    assert_eq!(
        f.dev.lock().unwrap().activations,
        vec![(1, VIRTIO_F_VERSION_1 | FEATURE_X)]
    );
}

#[test]
fn features_not_offered_fail_features_ok() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1 | (1 << 40));
    assert_eq!(rd(&mut f.t, 0x70) & status::FEATURES_OK, 0);
}

#[test]
fn legacy_driver_without_version_1_is_refused() {
    let mut f = fixture();
    negotiate(&mut f.t, FEATURE_X);
    assert_eq!(rd(&mut f.t, 0x70) & status::FEATURES_OK, 0);
}

#[test]
fn queue_outside_guest_memory_needs_reset_and_is_not_activated() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    wr(&mut f.t, 0x30, 0);
    wr(&mut f.t, 0x38, 16);
    wr(&mut f.t, 0x80, 0xffff_f000);
    wr(&mut f.t, 0x84, 0xffff);
    wr(&mut f.t, 0x44, 1);
    wr(&mut f.t, 0x70, ALL_OK);
    assert_ne!(rd(&mut f.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert_ne!(rd(&mut f.t, 0x60) & super::super::interrupt::INT_CONFIG, 0);
    assert!(f.dev.lock().unwrap().activations.is_empty());
}

#[test]
fn queue_registers_are_read_only_before_features_ok_and_after_driver_ok() {
    let mut f = fixture();
    wr(&mut f.t, 0x30, 0);
    wr(&mut f.t, 0x44, 1);
    assert_eq!(rd(&mut f.t, 0x44), 0, "ready before FEATURES_OK is ignored");
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    let q = MockSplitQueue::create(&f.mem, GuestAddress(0x1000), 16);
    setup_queue(&mut f.t, 0, &q);
    wr(&mut f.t, 0x70, ALL_OK);
    wr(&mut f.t, 0x44, 0);
    assert_eq!(
        rd(&mut f.t, 0x44),
        1,
        "ready after DRIVER_OK cannot be cleared"
    );
}

#[test]
fn status_that_drops_bits_is_ignored() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    wr(&mut f.t, 0x70, status::DRIVER_OK);
    assert_eq!(
        rd(&mut f.t, 0x70),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
}

#[test]
fn notify_register_signals_the_queue_eventfd() {
    let mut f = fixture();
    wr(&mut f.t, 0x50, 1);
    assert_eq!(f.t.notify_evts()[1].read().unwrap(), 1);
    wr(&mut f.t, 0x50, 99);
    assert!(
        f.t.notify_evts()[0].read().is_err(),
        "nothing pending on queue 0"
    );
}

#[test]
fn interrupt_ack_clears_status_bits() {
    let mut f = fixture();
    f.t.interrupt().signal_used_queue().unwrap();
    assert_eq!(rd(&mut f.t, 0x60), 1);
    wr(&mut f.t, 0x64, 1);
    assert_eq!(rd(&mut f.t, 0x60), 0);
}

#[test]
fn config_space_and_odd_accesses() {
    let mut f = fixture();
    let mut b = [0u8; 4];
    f.t.read(0x100, &mut b);
    assert_eq!(b, [0xaa, 0xbb, 0, 0]);
    let mut two = [0x55u8; 2];
    f.t.read(0x70, &mut two);
    assert_eq!(two, [0x55, 0x55], "16-bit register reads are ignored");
    f.t.write(0x70, &[1, 0]);
    assert_eq!(rd(&mut f.t, 0x70), 0);
    f.t.read(0x72, &mut b);
    assert_eq!(b, [0; 4], "unaligned register reads as zero");
}

#[test]
fn reset_of_an_unresettable_active_device_needs_reset() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    wr(&mut f.t, 0x70, ALL_OK);
    wr(&mut f.t, 0x70, 0);
    assert_ne!(rd(&mut f.t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn reset_before_activation_clears_state() {
    let mut f = fixture();
    negotiate(&mut f.t, VIRTIO_F_VERSION_1);
    wr(&mut f.t, 0x70, 0);
    assert_eq!(rd(&mut f.t, 0x70), 0);
}
