//! virtio-blk on the VM's device thread: the activation eventfd from the start, the
//! queue eventfd once the driver has activated the device.

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::Block;

const ACTIVATE: u32 = 0;
const QUEUE: u32 = 1;

impl Block {
    /// Follows activation and reset: drops the old queue eventfd, listens to the new.
    fn on_activate_evt(&mut self, ops: &mut EventOps) {
        let path = self.disk().path().display().to_string();
        if let Err(e) = self.activate_evt.read() {
            log::warn!("virtio-blk {path}: cannot read the activation eventfd: {e}");
        }
        // A new activation replaces the eventfd; a reset just drops it.
        let replace = !self.is_activated() || self.pending_notify.is_some();
        if let Some(old) = self.registered_notify.take_if(|_| replace) {
            if let Err(e) = ops.remove(Events::empty(&old)) {
                log::error!("virtio-blk {path}: cannot unregister the queue eventfd: {e}");
            }
        }
        if !self.is_activated() {
            return;
        }
        if let Some(notify) = self.pending_notify.take() {
            match ops.add(Events::with_data(&notify, QUEUE, EventSet::IN)) {
                Ok(()) => self.registered_notify = Some(notify),
                Err(e) => log::error!("virtio-blk {path}: cannot register the queue eventfd: {e}"),
            }
        }
    }

    fn on_queue_evt(&mut self) {
        if let Some(notify) = &self.registered_notify {
            if let Err(e) = notify.read() {
                log::debug!(
                    "virtio-blk {}: spurious queue event: {e}",
                    self.disk().path().display()
                );
            }
        }
        self.process_queue();
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            log::error!(
                "virtio-blk {}: cannot register the activation eventfd: {e}",
                self.disk().path().display()
            );
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => self.on_activate_evt(ops),
            QUEUE => self.on_queue_evt(),
            other => log::warn!(
                "virtio-blk {}: event for unknown source {other}",
                self.disk().path().display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    use vmm_sys_util::eventfd::EventFd;
    use vmm_sys_util::tempfile::TempFile;

    use super::*;
    use crate::devices::virtio::block::test_utils::*;
    use crate::devices::virtio::block::{
        BlockConfig, QUEUE_SIZE, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN,
    };
    use crate::devices::virtio::{Activation, ActiveQueue, Interrupt, VirtioDevice};

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    struct Fixture {
        _img: TempFile,
        dev: Arc<Mutex<Block>>,
        manager: EventManager<Subscriber>,
    }

    fn fixture() -> Fixture {
        let img = image(8);
        let config = BlockConfig {
            path: img.as_path().to_owned(),
            read_only: false,
        };
        let dev = Arc::new(Mutex::new(Block::new(config).unwrap()));
        let mut manager = EventManager::<Subscriber>::new().unwrap();
        manager.add_subscriber(dev.clone());
        Fixture {
            _img: img,
            dev,
            manager,
        }
    }

    impl Fixture {
        /// Activates the device as the transport would; returns the transport's side
        /// of the queue eventfd and the interrupt.
        fn activate(
            &self,
            mem: &GuestMemoryMmap,
            q: &MockSplitQueue<GuestMemoryMmap>,
        ) -> (EventFd, Arc<Interrupt>) {
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
            let queue: Queue = q.create_queue().unwrap();
            let activation = Activation {
                mem: mem.clone(),
                queues: vec![ActiveQueue {
                    queue,
                    notify: notify.try_clone().unwrap(),
                }],
                interrupt: interrupt.clone(),
                acked_features: 0,
            };
            self.dev.lock().unwrap().activate(activation).unwrap();
            (notify, interrupt)
        }

        fn run(&mut self) -> usize {
            self.manager.run_with_timeout(0).unwrap()
        }
    }

    #[test]
    fn queue_events_are_served_only_after_activation() {
        let mut f = fixture();
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        assert_eq!(f.run(), 0, "only the activation eventfd is watched");

        let (notify, irq) = f.activate(&mem, &q);
        assert_eq!(f.run(), 1, "activation event");
        assert!(f.dev.lock().unwrap().registered_notify.is_some());

        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        notify.write(1).unwrap();
        assert_eq!(f.run(), 1, "queue event");
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
        assert_eq!(f.run(), 0, "the queue eventfd was drained");
    }

    #[test]
    fn a_stray_activation_event_keeps_the_queue_registered() {
        let mut f = fixture();
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let (notify, _irq) = f.activate(&mem, &q);
        f.run();
        f.dev.lock().unwrap().activate_evt.write(1).unwrap();
        assert_eq!(f.run(), 1);
        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        notify.write(1).unwrap();
        assert_eq!(f.run(), 1);
        assert_eq!(q.used().idx().load(), 1);
    }

    #[test]
    fn reset_stops_listening_to_the_queue() {
        let mut f = fixture();
        let mem = guest_memory();
        let q = MockSplitQueue::new(&mem, QUEUE_SIZE);
        let (notify, _irq) = f.activate(&mem, &q);
        f.run();
        assert!(f.dev.lock().unwrap().reset());
        assert_eq!(f.run(), 1);
        assert!(f.dev.lock().unwrap().registered_notify.is_none());

        write_header(&mem, VIRTIO_BLK_T_IN, 0);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        notify.write(1).unwrap();
        assert_eq!(f.run(), 0);
        assert_eq!(q.used().idx().load(), 0);

        // Activated again, it picks up the request waiting in the queue.
        let (notify, _irq) = f.activate(&mem, &q);
        f.run();
        notify.write(1).unwrap();
        assert_eq!(f.run(), 1);
        assert_eq!(q.used().idx().load(), 1);
    }

    /// The whole path, as the guest drives it: virtio-mmio registers, the event loop,
    /// a read, the interrupt.
    #[test]
    fn a_driver_reads_a_sector_through_the_transport() {
        use crate::devices::virtio::interrupt::INT_VRING;
        use crate::devices::virtio::test_utils::{
            device_features, driver_ok, negotiate, read_reg as rd, setup_queue, write_reg as wr,
            FEATURES_OK,
        };
        use crate::devices::virtio::{status as dev_status, MmioTransport, VIRTIO_F_VERSION_1};

        let mut f = fixture();
        let mem = guest_memory();
        let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let dev: Arc<Mutex<dyn VirtioDevice>> = f.dev.clone();
        let mut t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();

        assert_eq!(rd(&mut t, 0x8), 2, "device type");
        let features = device_features(&mut t);
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        assert_eq!(negotiate(&mut t, features), FEATURES_OK);

        let q = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE);
        wr(&mut t, 0x30, 0);
        assert_eq!(rd(&mut t, 0x34), u32::from(QUEUE_SIZE));
        let rings = [q.desc_table_addr(), q.avail_addr(), q.used_addr()];
        setup_queue(&mut t, 0, QUEUE_SIZE, rings);
        driver_ok(&mut t);
        assert_eq!(rd(&mut t, 0x70) & dev_status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(f.run(), 1, "activation event");

        write_header(&mem, VIRTIO_BLK_T_IN, 5);
        add_chain(&q, 0, &with_header_and_status(&[writable(DATA, 512)]));
        wr(&mut t, 0x50, 0);
        assert_eq!(f.run(), 1, "queue event");
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let expected: Vec<u8> = (5 * 512..6 * 512).map(pattern).collect();
        assert_eq!(guest_bytes(&mem, DATA, 512), expected);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
        assert_eq!(rd(&mut t, 0x60), INT_VRING);
    }
}
