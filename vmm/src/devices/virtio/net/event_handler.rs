//! virtio-net on the VM's device thread: the update eventfd from the start, the tap once
//! the device has one, the queue eventfds once the driver has activated the device. The
//! work itself is in `device.rs`.
//!
//! The tap is edge-triggered: rx reads it until `EAGAIN`, except when the guest has no rx
//! buffers, and then it is the rx queue's notification that resumes reading, not the
//! tap. A level-triggered tap would wake the loop again and again while the guest is
//! not taking frames.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::{Net, NUM_QUEUES, RXQ_INDEX, TXQ_INDEX};

const TAG_UPDATE: u32 = 1;
const TAG_TAP: u32 = 2;
/// Queue `i` notifies with tag `TAG_QUEUE + i`.
const TAG_QUEUE: u32 = 16;

/// Readable for rx; writable again after a tx write that would have blocked.
pub(super) fn tap_events() -> EventSet {
    EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED
}

impl Net {
    fn register(&self, ops: &mut EventOps, events: Events, what: &str) -> bool {
        match ops.add(events) {
            Ok(()) => true,
            Err(e) => {
                log::error!("virtio-net {}: cannot register {what}: {e}", self.index());
                false
            }
        }
    }

    /// Follows activation, reset and attachment: drops the old queue eventfds, listens
    /// to the new ones and to a new tap, then serves what waited meanwhile.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for notify in std::mem::take(&mut self.stale_notify) {
            if let Err(e) = ops.remove(Events::empty(&notify)) {
                log::error!(
                    "virtio-net {}: cannot unregister a queue eventfd: {e}",
                    self.index()
                );
            }
        }
        // With vhost-net the kernel serves the tap and the queues: nothing to watch.
        let userspace = self.vhost.is_none();
        if let Some(tap) = self
            .tap
            .as_ref()
            .filter(|_| userspace && !self.tap_registered)
        {
            let events = Events::with_data_raw(tap.as_raw_fd(), TAG_TAP, tap_events());
            self.tap_registered = self.register(ops, events, "the tap");
        }
        let queue_events: Vec<Events> = match &self.active {
            Some(active) if !active.registered => (0..NUM_QUEUES)
                .zip(&active.queues)
                .filter_map(|(i, q)| {
                    let tag = TAG_QUEUE + u32::try_from(i).ok()?;
                    Some(Events::with_data(&q.notify, tag, EventSet::IN))
                })
                .collect(),
            _ => Vec::new(),
        };
        if queue_events.is_empty() {
            return;
        }
        for events in queue_events {
            self.register(ops, events, "a queue eventfd");
        }
        if let Some(active) = self.active.as_mut() {
            active.registered = true;
        }
    }

    fn on_update(&mut self, ops: &mut EventOps) {
        if let Err(e) = self.update_evt.read() {
            log::debug!("virtio-net {}: update event: {e}", self.index());
        }
        self.sync_registrations(ops);
        // The driver may have queued frames before we listened, and an edge-triggered
        // tap may hold frames that came before it was registered.
        self.process_tx();
        self.process_rx();
    }

    fn on_queue(&mut self, index: usize) {
        let Some(q) = self.active.as_ref().and_then(|a| a.queues.get(index)) else {
            return;
        };
        if let Err(e) = q.notify.read() {
            log::debug!("virtio-net {}: queue {index} notify: {e}", self.index());
        }
        match index {
            // New rx buffers: deliver the frame held back, and read the tap again.
            RXQ_INDEX => {
                self.process_rx();
            }
            TXQ_INDEX => {
                self.process_tx();
            }
            _ => {}
        }
    }

    fn on_tap(&mut self, events: EventSet) {
        if events.contains(EventSet::IN) {
            self.process_rx();
        }
        if events.contains(EventSet::OUT) && self.tx_blocked {
            self.process_tx();
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        let update = Events::with_data(&self.update_evt, TAG_UPDATE, EventSet::IN);
        self.register(ops, update, "the update eventfd");
        self.sync_registrations(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            TAG_UPDATE => self.on_update(ops),
            TAG_TAP => self.on_tap(events.event_set()),
            tag => match tag.checked_sub(TAG_QUEUE).map(usize::try_from) {
                Some(Ok(index)) => self.on_queue(index),
                _ => log::warn!("virtio-net {}: event with unknown tag {tag}", self.index()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};

    use super::*;
    use crate::devices::virtio::interrupt::{INT_CONFIG, INT_VRING};
    use crate::devices::virtio::net::test_utils::*;
    use crate::devices::virtio::net::{NetAttacher, VIRTIO_NET_F_MRG_RXBUF};
    use crate::devices::virtio::VirtioDevice;

    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    struct Fixture {
        dev: Arc<Mutex<Net>>,
        manager: EventManager<Subscriber>,
    }

    fn fixture(tap: Option<super::super::Tap>) -> Fixture {
        let dev = Arc::new(Mutex::new(net(tap)));
        let mut manager = EventManager::<Subscriber>::new().unwrap();
        manager.add_subscriber(dev.clone());
        Fixture { dev, manager }
    }

    impl Fixture {
        fn run(&mut self) -> usize {
            self.manager.run_with_timeout(0).unwrap()
        }

        /// Runs the loop until it has nothing to do; returns how many events it saw.
        fn settle(&mut self) -> usize {
            let mut total = 0;
            for _ in 0..100 {
                match self.run() {
                    0 => return total,
                    n => total += n,
                }
            }
            panic!("the event loop keeps waking up");
        }

        fn attacher(&self) -> NetAttacher {
            NetAttacher {
                devices: vec![Arc::downgrade(&self.dev)],
            }
        }
    }

    #[test]
    fn a_guest_without_rx_buffers_does_not_make_the_loop_spin() {
        let (tap, host) = fake_tap();
        let mut f = fixture(Some(tap));
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let irq = interrupt();
        let (a, [rx_kick, _]) = activation(&mem, &rxq, &txq, &irq, 0);
        f.dev.lock().unwrap().activate(a).unwrap();
        f.settle();

        // Frames arrive; the guest has no buffers: one is held, the rest stay in the tap,
        // and the loop goes quiet although the tap is still readable.
        for i in 0..3 {
            host_send(&host, &vnet_frame(0, 0, 60, i));
        }
        assert_eq!(f.settle(), 1, "one tap edge, then silence");
        assert!(f.dev.lock().unwrap().rx_held());
        assert_eq!(rxq.used().idx().load(), 0);

        // The driver adds buffers and kicks: every frame goes in.
        post_rx_buffers(&rxq, 0, 8, 2048);
        rx_kick.write(1).unwrap();
        assert_eq!(f.settle(), 1);
        assert_eq!(rxq.used().idx().load(), 3);
        for i in 0..3u8 {
            let addr = RX_BUFS + u64::from(i) * 0x1_0000;
            assert_eq!(guest_bytes(&mem, addr + 12 + 14, 1), [i]);
        }
        assert!(!f.dev.lock().unwrap().rx_held());
        assert_eq!(irq.status(), INT_VRING);

        // Another frame is one more edge, served at once.
        host_send(&host, &vnet_frame(0, 0, 60, 9));
        assert_eq!(f.settle(), 1);
        assert_eq!(rxq.used().idx().load(), 4);
    }

    #[test]
    fn a_late_tap_brings_the_link_up_and_carries_frames_both_ways() {
        let mut f = fixture(None);
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let irq = interrupt();
        let (a, [_, tx_kick]) = activation(&mem, &rxq, &txq, &irq, VIRTIO_NET_F_MRG_RXBUF);
        f.dev.lock().unwrap().activate(a).unwrap();
        f.settle();
        assert!(!f.dev.lock().unwrap().link_up());

        // Without a tap, tx frames are dropped but the queue drains.
        post_tx_frame(&mem, &txq, 0, TX_BUFS, &vnet_frame(0, 0, 60, 1), 4096);
        tx_kick.write(1).unwrap();
        f.settle();
        assert_eq!(txq.used().idx().load(), 1);

        let (tap, host) = fake_tap();
        f.attacher().attach(0, tap).unwrap();
        assert!(f.dev.lock().unwrap().link_up());
        assert_ne!(irq.status() & INT_CONFIG, 0, "config-change interrupt");
        f.settle();

        post_rx_buffers(&rxq, 0, 4, 2048);
        host_send(&host, &vnet_frame(0, 0, 100, 7));
        f.settle();
        assert_eq!(rxq.used().idx().load(), 1);

        let out = vnet_frame(0, 0, 80, 3);
        post_tx_frame(&mem, &txq, 1, TX_BUFS, &out, 30);
        tx_kick.write(1).unwrap();
        f.settle();
        assert_eq!(host_recv(&host).unwrap(), out);

        let (again, _host) = fake_tap();
        let err = f.attacher().attach(0, again).unwrap_err();
        assert_eq!(err.to_string(), "virtio-net 0 already has tap \"fake0\"");
    }

    #[test]
    fn a_tap_that_would_block_holds_tx_until_it_is_writable() {
        let (tap, host) = fake_tap();
        // A tiny send buffer: the socket fills after a few frames.
        nix::sys::socket::setsockopt(&tap, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
        let mut f = fixture(Some(tap));
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let irq = interrupt();
        let (a, [_, tx_kick]) = activation(&mem, &rxq, &txq, &irq, 0);
        f.dev.lock().unwrap().activate(a).unwrap();
        f.settle();

        let frames: Vec<Vec<u8>> = (0..40u8).map(|i| vnet_frame(0, 0, 1400, i)).collect();
        for (i, frame) in (0u16..).zip(&frames) {
            post_tx_frame(&mem, &txq, i, TX_BUFS + u64::from(i) * 0x1000, frame, 4096);
        }
        tx_kick.write(1).unwrap();
        f.settle();
        let sent = txq.used().idx().load();
        assert!(sent < 40, "the socket should have filled ({sent} sent)");
        assert!(f.dev.lock().unwrap().tx_blocked);

        // The host reads: the tap is writable again and the rest goes, in order.
        let mut got = Vec::new();
        while got.len() < frames.len() {
            match host_recv(&host) {
                Some(frame) => got.push(frame),
                None => assert!(f.settle() > 0, "tx never resumed"),
            }
        }
        assert_eq!(got, frames);
        assert_eq!(txq.used().idx().load(), 40);
        assert!(!f.dev.lock().unwrap().tx_blocked);
    }

    /// The whole path as the guest drives it: virtio-mmio registers, a late tap, the
    /// config interrupt (InterruptStatus bit 1) and the link status in config space.
    #[test]
    fn a_driver_sees_the_link_come_up_through_the_transport() {
        use crate::devices::virtio::test_utils::{
            device_features, driver_ok, negotiate, read_reg as rd, setup_queue, write_reg as wr,
            FEATURES_OK,
        };
        use crate::devices::virtio::{status, MmioTransport, VIRTIO_F_VERSION_1};
        use crate::devices::BusDevice;

        let mut f = fixture(None);
        let mem = guest_memory();
        let irq = interrupt();
        let dev: Arc<Mutex<dyn VirtioDevice>> = f.dev.clone();
        let mut t = MmioTransport::new(dev, mem.clone(), irq.clone()).unwrap();
        let link = |t: &mut MmioTransport| {
            let mut b = [0u8; 2];
            t.read(0x100 + 6, &mut b);
            u16::from_le_bytes(b)
        };

        assert_eq!(rd(&mut t, 0x8), 1, "device type");
        let features = device_features(&mut t);
        assert_ne!(features & VIRTIO_F_VERSION_1, 0);
        assert_eq!(negotiate(&mut t, features), FEATURES_OK);
        let (rxq, txq) = queues(&mem);
        for (i, q) in [(0, &rxq), (1, &txq)] {
            wr(&mut t, 0x30, i);
            assert_eq!(rd(&mut t, 0x34), 256);
            setup_queue(
                &mut t,
                i,
                256,
                [q.desc_table_addr(), q.avail_addr(), q.used_addr()],
            );
        }
        driver_ok(&mut t);
        assert_eq!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        f.settle();
        let mut mac = [0u8; 6];
        t.read(0x100, &mut mac);
        assert_eq!(mac, MAC);
        assert_eq!(link(&mut t), 0);

        let (tap, host) = fake_tap();
        let attacher = f.attacher();
        std::thread::spawn(move || attacher.attach(0, tap))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(rd(&mut t, 0x60), INT_CONFIG);
        assert_eq!(link(&mut t), 1);
        wr(&mut t, 0x64, INT_CONFIG);
        assert_eq!(rd(&mut t, 0x60), 0);
        f.settle();

        // With every feature acked, the frame goes out with its offload header intact.
        let out = vnet_frame(1, 4, 3000, 9);
        post_tx_frame(&mem, &txq, 0, TX_BUFS, &out, 1024);
        wr(&mut t, 0x50, 1);
        f.settle();
        assert_eq!(host_recv(&host).unwrap(), out);
        assert_eq!(rd(&mut t, 0x60), INT_VRING);
    }

    #[test]
    fn reset_stops_listening_to_the_queues_and_a_new_activation_listens_again() {
        let (tap, host) = fake_tap();
        let mut f = fixture(Some(tap));
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let (a, [rx_kick, _]) = activation(&mem, &rxq, &txq, &interrupt(), 0);
        f.dev.lock().unwrap().activate(a).unwrap();
        f.settle();
        assert!(f.dev.lock().unwrap().reset());
        f.settle();
        assert!(f.dev.lock().unwrap().stale_notify.is_empty());
        rx_kick.write(1).unwrap();
        assert_eq!(f.run(), 0, "the old queue eventfd is not watched");

        host_send(&host, &vnet_frame(0, 0, 60, 1));
        f.settle();
        post_rx_buffers(&rxq, 0, 1, 2048);
        let (a, _) = activation(&mem, &rxq, &txq, &interrupt(), 0);
        f.dev.lock().unwrap().activate(a).unwrap();
        f.settle();
        assert_eq!(
            rxq.used().idx().load(),
            1,
            "the frame that waited in the tap"
        );
    }
}
