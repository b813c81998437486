//! The virtio-blk device: features, configuration space, activation, and draining its
//! one request queue.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::request::{self, Completion};
use super::{
    BlockConfig, BlockError, Disk, BLK_SIZE, DISCARD_SECTOR_ALIGNMENT, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS, MAX_WRITE_ZEROES_SEG, QUEUE_SIZE, SEG_MAX,
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, Activation, Interrupt, VirtioDevice, TYPE_BLOCK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// `struct virtio_blk_config` up to the secure-erase fields (virtio 1.2 §5.2.4).
pub const CONFIG_LEN: usize = 72;

/// What the device holds between activation and reset.
#[derive(Debug)]
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
    acked_features: u64,
}

/// A virtio-blk device over one raw image.
#[derive(Debug)]
pub struct Block {
    disk: Disk,
    avail_features: u64,
    active: Option<Active>,
    /// Written on activation and on reset, to have the event loop (un)register the
    /// queue's eventfd.
    pub(super) activate_evt: EventFd,
    /// The queue eventfd handed over by the last activation, not yet registered.
    pub(super) pending_notify: Option<EventFd>,
    /// The queue eventfd the event loop listens to.
    pub(super) registered_notify: Option<EventFd>,
}

impl Block {
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        let disk = Disk::open(&config.path, config.read_only)?;
        let mut avail_features = VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_RING_F_EVENT_IDX;
        avail_features |= if config.read_only {
            VIRTIO_BLK_F_RO
        } else {
            VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES
        };
        Ok(Self {
            disk,
            avail_features,
            active: None,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(BlockError::EventFd)?,
            pending_notify: None,
            registered_notify: None,
        })
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// The configuration space (virtio 1.2 §5.2.4), little-endian.
    pub fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            c[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &self.disk.sectors().to_le_bytes());
        // size_max (8) is not offered; geometry (16) neither.
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &BLK_SIZE.to_le_bytes());
        // Topology (24..32), writeback (32) and num_queues (34) are not offered.
        if self.avail_features & VIRTIO_BLK_F_DISCARD != 0 {
            put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(40, &MAX_DISCARD_SEG.to_le_bytes());
            put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        }
        if self.avail_features & VIRTIO_BLK_F_WRITE_ZEROES != 0 {
            put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
            put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
            // write_zeroes_may_unmap: an unmap request punches a hole.
            put(56, &[1]);
        }
        c
    }

    /// Serves every request the driver has made available, then signals the used queue
    /// if the driver wants to hear of it. Returns how many chains were completed.
    pub fn process_queue(&mut self) -> usize {
        let Some(active) = self.active.as_mut() else {
            return 0;
        };
        let path = self.disk.path().display();
        let mem = &active.mem;
        let mut completed = 0;
        let mut idle_passes = 0;
        loop {
            if let Err(e) = active.queue.disable_notification(mem) {
                log::error!("virtio-blk {path}: cannot disable queue notifications: {e}");
                break;
            }
            let mut popped = 0;
            while let Some(chain) = active.queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let c = request::process(mem, chain, &self.disk, active.acked_features);
                log_completion(&path, head, &c);
                if let Err(e) = active.queue.add_used(mem, head, c.used_len) {
                    log::error!("virtio-blk {path}: cannot return chain {head}: {e}");
                }
                popped += 1;
            }
            completed += popped;
            if popped == 0 {
                idle_passes += 1;
            }
            // Requests that came in while notifications were off are served now. An
            // available ring that says there is more but yields nothing (an index the
            // driver corrupted) must not have us spin.
            match active.queue.enable_notification(mem) {
                Ok(true) if idle_passes < 2 => {}
                Ok(true) => {
                    log::error!("virtio-blk {path}: the available ring is corrupt; queue stalled");
                    break;
                }
                Ok(false) => break,
                Err(e) => {
                    log::error!("virtio-blk {path}: cannot enable queue notifications: {e}");
                    break;
                }
            }
        }
        if completed > 0 {
            match active.queue.needs_notification(mem) {
                Ok(true) => {
                    if let Err(e) = active.interrupt.signal_used_queue() {
                        log::error!("virtio-blk {path}: cannot raise the interrupt: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => log::error!("virtio-blk {path}: cannot read used_event: {e}"),
            }
        }
        completed
    }

    fn wake_event_loop(&self) -> Result<(), ActivateError> {
        self.activate_evt.write(1).map_err(ActivateError::Signal)
    }
}

fn log_completion(path: &impl std::fmt::Display, head: u16, c: &Completion) {
    let Some(e) = &c.error else {
        return;
    };
    match c.status {
        None => log::warn!("virtio-blk {path}: chain {head} dropped without a status: {e}"),
        Some(status) => {
            log::warn!("virtio-blk {path}: chain {head} failed with status {status}: {e}")
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let Activation {
            mem,
            queues,
            interrupt,
            acked_features,
        } = activation;
        let [q] = <[_; 1]>::try_from(queues).map_err(|qs| ActivateError::QueueCount {
            expected: 1,
            got: qs.len(),
        })?;
        self.active = Some(Active {
            mem,
            queue: q.queue,
            interrupt,
            acked_features,
        });
        self.pending_notify = Some(q.notify);
        self.wake_event_loop()
    }

    fn reset(&mut self) -> bool {
        self.active = None;
        self.pending_notify = None;
        // The event loop drops the queue eventfd when it sees the device inactive.
        if let Err(e) = self.wake_event_loop() {
            log::error!("virtio-blk {}: reset: {e}", self.disk.path().display());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::VirtqUsedElem;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::test_utils::*;
    use crate::devices::virtio::block::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use crate::devices::virtio::interrupt::INT_VRING;
    use crate::devices::virtio::ActiveQueue;

    fn block(sectors: u64, read_only: bool) -> (TempFile, Block) {
        let img = image(sectors);
        let config = BlockConfig {
            path: img.as_path().to_owned(),
            read_only,
        };
        (img, Block::new(config).unwrap())
    }

    fn interrupt() -> Arc<Interrupt> {
        Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }

    fn activation(
        mem: &GuestMemoryMmap,
        q: &MockSplitQueue<GuestMemoryMmap>,
        interrupt: &Arc<Interrupt>,
        features: u64,
    ) -> Activation {
        let mut queue: Queue = q.create_queue().unwrap();
        queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        Activation {
            mem: mem.clone(),
            queues: vec![ActiveQueue {
                queue,
                notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }],
            interrupt: interrupt.clone(),
            acked_features: features,
        }
    }

    fn used(q: &MockSplitQueue<GuestMemoryMmap>, i: usize) -> (u32, u32) {
        let e: VirtqUsedElem = q.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    #[test]
    fn features_follow_read_only() {
        let (_img, rw) = block(8, false);
        let f = rw.avail_features();
        for bit in [
            VIRTIO_BLK_F_SEG_MAX,
            VIRTIO_BLK_F_BLK_SIZE,
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_RING_F_EVENT_IDX,
        ] {
            assert_ne!(f & bit, 0, "bit {bit:#x}");
        }
        assert_eq!(f & VIRTIO_BLK_F_RO, 0);

        let (_img, ro) = block(8, true);
        let f = ro.avail_features();
        assert_ne!(f & VIRTIO_BLK_F_RO, 0);
        assert_eq!(f & (VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(ro.device_type(), TYPE_BLOCK);
        assert_eq!(ro.queue_max_sizes(), &[256]);
    }

    fn config_u32(dev: &Block, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        dev.read_config(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_space_follows_virtio_1_2() {
        let (_img, dev) = block(1000, false);
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 1000);
        assert_eq!(config_u32(&dev, 8), 0, "size_max is not offered");
        assert_eq!(config_u32(&dev, 12), SEG_MAX);
        assert_eq!(config_u32(&dev, 20), 512);
        assert_eq!(config_u32(&dev, 36), MAX_DISCARD_SECTORS);
        assert_eq!(config_u32(&dev, 40), MAX_DISCARD_SEG);
        assert_eq!(config_u32(&dev, 44), DISCARD_SECTOR_ALIGNMENT);
        assert_eq!(config_u32(&dev, 48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(config_u32(&dev, 52), MAX_WRITE_ZEROES_SEG);
        let mut unmap = [0u8; 1];
        dev.read_config(56, &mut unmap);
        assert_eq!(unmap, [1]);
        // Narrow reads, and reads past the end.
        let mut b = [0u8; 2];
        dev.read_config(20, &mut b);
        assert_eq!(u16::from_le_bytes(b), 512);
        assert_eq!(config_u32(&dev, CONFIG_LEN as u64), 0);

        let (_img, ro) = block(1000, true);
        assert_eq!(config_u32(&ro, 36), 0);
        assert_eq!(config_u32(&ro, 48), 0);
    }

    #[test]
    fn new_names_the_path_it_cannot_open() {
        let err = Block::new(BlockConfig {
            path: "/nonexistent/rootfs.img".into(),
            read_only: false,
        })
        .unwrap_err();
        assert!(matches!(err, BlockError::Open { .. }));
        assert!(err.to_string().contains("/nonexistent/rootfs.img"), "{err}");
    }

    #[test]
    fn activation_needs_exactly_one_queue() {
        let mem = guest_memory();
        let (_img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        for n in [0, 2] {
            let mut a = activation(&mem, &q, &interrupt(), 0);
            if n == 0 {
                a.queues.clear();
            } else {
                let extra = activation(&mem, &q, &interrupt(), 0).queues.pop().unwrap();
                a.queues.push(extra);
            }
            let err = dev.activate(a).unwrap_err();
            assert!(
                matches!(err, ActivateError::QueueCount { expected: 1, got } if got == n),
                "{err}"
            );
            assert!(!dev.is_activated());
        }
    }

    #[test]
    fn activation_wakes_the_event_loop_once() {
        let mem = guest_memory();
        let (_img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        dev.activate(activation(&mem, &q, &interrupt(), 0)).unwrap();
        assert!(dev.is_activated());
        assert_eq!(dev.activate_evt.read().unwrap(), 1);
        assert!(dev.pending_notify.is_some());
        let again = dev.activate(activation(&mem, &q, &interrupt(), 0));
        assert!(matches!(again, Err(ActivateError::AlreadyActive)));
    }

    #[test]
    fn serves_every_chain_and_raises_the_interrupt() {
        let mem = guest_memory();
        let (img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let irq = interrupt();
        assert_eq!(dev.process_queue(), 0, "nothing to do before activation");
        dev.activate(activation(&mem, &q, &irq, VIRTIO_BLK_F_FLUSH))
            .unwrap();

        // A read of sector 1 into DATA, then a write of DATA + 0x1000 to sector 2.
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA + 0x1000))
            .unwrap();
        write_header(&mem, VIRTIO_BLK_T_IN, 1);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        assert_eq!(dev.process_queue(), 1);
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        write_header(&mem, VIRTIO_BLK_T_OUT, 2);
        add_chain(
            &q,
            3,
            &with_header_and_status(&[readable(DATA + 0x1000, 512)]),
        );
        // A chain with no status in between: returned, with nothing written.
        add_chain(&q, 6, &[readable(HEADER, 16)]);
        assert_eq!(dev.process_queue(), 2);

        assert_eq!(q.used().idx().load(), 3);
        assert_eq!(used(&q, 0), (0, 513));
        assert_eq!(used(&q, 1), (3, 1));
        assert_eq!(used(&q, 2), (6, 0));
        assert_eq!(
            guest_bytes(&mem, DATA, 512),
            (512..1024).map(pattern).collect::<Vec<_>>()
        );
        let data = std::fs::read(img.as_path()).unwrap();
        assert_eq!(data[1024..1536], [0x5a; 512]);

        assert_eq!(irq.irq_evt().read().unwrap(), 2, "one interrupt per pass");
        assert_eq!(irq.status(), INT_VRING);
    }

    #[test]
    fn event_idx_holds_back_interrupts_the_driver_does_not_want() {
        let mem = guest_memory();
        let (_img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let irq = interrupt();
        dev.activate(activation(&mem, &q, &irq, VIRTIO_RING_F_EVENT_IDX))
            .unwrap();
        // used_event (after the avail ring): interrupt once the 2nd chain is used.
        let used_event = q.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
        mem.write_obj(1u16, GuestAddress(used_event)).unwrap();

        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        assert_eq!(dev.process_queue(), 1);
        assert!(irq.irq_evt().read().is_err(), "no interrupt yet");
        add_chain(&q, 3, &with_header_and_status(&[writable(DATA, 512)]));
        assert_eq!(dev.process_queue(), 1);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
    }

    #[test]
    fn a_corrupt_available_index_does_not_hang_the_device() {
        let mem = guest_memory();
        let (_img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let irq = interrupt();
        dev.activate(activation(&mem, &q, &irq, VIRTIO_RING_F_EVENT_IDX))
            .unwrap();
        q.avail().idx().store(1000);
        assert_eq!(dev.process_queue(), 0);
        assert!(irq.irq_evt().read().is_err());
    }

    #[test]
    fn reset_drops_the_queue_and_allows_a_new_activation() {
        let mem = guest_memory();
        let (_img, mut dev) = block(8, false);
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        dev.activate(activation(&mem, &q, &interrupt(), 0)).unwrap();
        assert!(dev.reset());
        assert!(!dev.is_activated());
        assert!(dev.pending_notify.is_none());
        assert_eq!(dev.activate_evt.read().unwrap(), 2);
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        assert_eq!(dev.process_queue(), 0);
        dev.activate(activation(&mem, &q, &interrupt(), 0)).unwrap();
        assert_eq!(dev.process_queue(), 1);
    }
}
