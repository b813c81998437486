//! The vhost-net backend without the kernel's vhost-net: feature and offload
//! negotiation, the order of the ioctls (a recording fake), the interrupt status, reset
//! and the errors; and, where `/dev/vhost-net` exists, frames both ways through the
//! real thing.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::virtio::interrupt::{INT_CONFIG, INT_VRING};
use crate::devices::virtio::net::test_utils::*;
use crate::devices::virtio::net::{
    Net, NetAttacher, NetBackend, NetConfig, QUEUE_SIZE, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6,
    TUN_F_UFO, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
};
use crate::devices::virtio::VirtioDevice;

/// What the kernel's vhost-net offers (`VHOST_NET_FEATURES`, Linux 6.x): the ring
/// features, VERSION_1, MRG_RXBUF, and vhost's own bits (LOG_ALL 26, NET_HDR 27),
/// ACCESS_PLATFORM (33) and RING_RESET (40).
const KERNEL_OFFERS: u64 = (1 << 24) // NOTIFY_ON_EMPTY
    | (1 << 26)
    | (1 << 27)
    | (1 << 28) // INDIRECT_DESC
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MRG_RXBUF
    | (1 << 33)
    | (1 << 40);

const KICK_MARK: u64 = 100;

/// One vhost-net ioctl as the fake saw it; fds by number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ioctl {
    Open,
    GetFeatures,
    SetOwner,
    SetFeatures(u64),
    /// (guest address, size, VMM address) of each region.
    SetMemTable(Vec<(u64, u64, u64)>),
    Num(usize, u16),
    /// Descriptor table, available ring, used ring.
    Addr(usize, u64, u64, u64),
    Base(usize, u16),
    /// The fake writes `KICK_MARK + queue` to the kick eventfd, for the test to find
    /// on the notify eventfd it knows (the activation's, a clone, is closed by then).
    Kick(usize),
    Call(usize, RawFd),
    Backend(usize, Option<RawFd>),
    Close,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Ioctl>>>);

impl Log {
    fn push(&self, call: Ioctl) {
        self.0.lock().unwrap().push(call);
    }

    /// Everything recorded since the last call.
    fn take(&self) -> Vec<Ioctl> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A vhost-net that records its ioctls, and fails the one named `fail`; with a name
/// ending in `#2`, only its second call.
struct Fake {
    log: Log,
    offers: u64,
    fail: Option<&'static str>,
    calls: Mutex<Vec<&'static str>>,
}

impl Fake {
    fn call(&self, name: &'static str, call: Ioctl) -> vhost::Result<()> {
        self.log.push(call);
        let mut calls = self.calls.lock().unwrap();
        calls.push(name);
        let second = calls.iter().filter(|&&n| n == name).count() == 2;
        let fail = self.fail == Some(name)
            || (second && self.fail.and_then(|f| f.strip_suffix("#2")) == Some(name));
        if fail {
            return Err(vhost::Error::IoctlError(std::io::Error::from_raw_os_error(
                libc::EINVAL,
            )));
        }
        Ok(())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.log.push(Ioctl::Close);
    }
}

impl VhostNetOps for Fake {
    fn get_features(&self) -> vhost::Result<u64> {
        self.call("GET_FEATURES", Ioctl::GetFeatures)
            .map(|()| self.offers)
    }
    fn set_owner(&self) -> vhost::Result<()> {
        self.call("SET_OWNER", Ioctl::SetOwner)
    }
    fn set_features(&self, features: u64) -> vhost::Result<()> {
        self.call("SET_FEATURES", Ioctl::SetFeatures(features))
    }
    fn set_mem_table(&self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        let regions = regions
            .iter()
            .map(|r| (r.guest_phys_addr, r.memory_size, r.userspace_addr))
            .collect();
        self.call("SET_MEM_TABLE", Ioctl::SetMemTable(regions))
    }
    fn set_vring_num(&self, queue: usize, num: u16) -> vhost::Result<()> {
        self.call("SET_VRING_NUM", Ioctl::Num(queue, num))
    }
    fn set_vring_addr(&self, queue: usize, c: &VringConfigData) -> vhost::Result<()> {
        let call = Ioctl::Addr(
            queue,
            c.desc_table_addr,
            c.avail_ring_addr,
            c.used_ring_addr,
        );
        self.call("SET_VRING_ADDR", call)
    }
    fn set_vring_base(&self, queue: usize, base: u16) -> vhost::Result<()> {
        self.call("SET_VRING_BASE", Ioctl::Base(queue, base))
    }
    fn set_vring_kick(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        fd.write(KICK_MARK + queue as u64).unwrap();
        self.call("SET_VRING_KICK", Ioctl::Kick(queue))
    }
    fn set_vring_call(&self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.call("SET_VRING_CALL", Ioctl::Call(queue, fd.as_raw_fd()))
    }
    fn set_backend(&self, queue: usize, tap: Option<&File>) -> vhost::Result<()> {
        let call = Ioctl::Backend(queue, tap.map(AsRawFd::as_raw_fd));
        self.call("SET_BACKEND", call)
    }
}

/// An opener of fakes that share `log`; the ioctl named `fail` fails.
fn opener(log: &Log, offers: u64, fail: Option<&'static str>) -> Opener {
    let log = log.clone();
    Box::new(move |_mem| {
        log.push(Ioctl::Open);
        Ok(Box::new(Fake {
            log: log.clone(),
            offers,
            fail,
            calls: Mutex::new(Vec::new()),
        }))
    })
}

fn vhost_net(tap: Option<Tap>, log: &Log, fail: Option<&'static str>) -> Net {
    let mem = guest_memory();
    let vhost = Vhost::open(0, &mem, opener(log, KERNEL_OFFERS, fail)).unwrap();
    let config = NetConfig {
        mac: MAC,
        tap,
        backend: NetBackend::Vhost,
    };
    Net::with_vhost(0, config, Some(vhost)).unwrap()
}

/// Every feature the device offers, as a driver that takes them all acks them.
fn all_features(dev: &Net) -> u64 {
    dev.avail_features() | VIRTIO_F_VERSION_1
}

/// The ioctls that hand vhost one queue.
fn vring_calls(i: usize, q: &MockQueue<'_>, irq: RawFd) -> Vec<Ioctl> {
    vec![
        Ioctl::Num(i, QUEUE_SIZE),
        Ioctl::Addr(i, q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0),
        Ioctl::Base(i, 0),
        Ioctl::Kick(i),
        Ioctl::Call(i, irq),
    ]
}

#[test]
fn the_guest_is_offered_ring_features_only_when_vhost_has_them() {
    assert_eq!(guest_features(KERNEL_OFFERS), AVAIL_FEATURES);
    let without_mrg = guest_features(KERNEL_OFFERS & !VIRTIO_NET_F_MRG_RXBUF);
    assert_eq!(without_mrg, AVAIL_FEATURES & !VIRTIO_NET_F_MRG_RXBUF);
    let bare = guest_features(VIRTIO_F_VERSION_1);
    assert_eq!(bare & (VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX), 0);
    // The device's own features (the tap does the offloads) stay.
    let device = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS | VIRTIO_NET_F_CSUM;
    assert_eq!(bare & device, device);
}

#[test]
fn vhost_is_told_the_ring_features_the_driver_acked_and_nothing_of_its_own() {
    let acked = AVAIL_FEATURES | VIRTIO_F_VERSION_1;
    assert_eq!(
        vhost_features(acked, KERNEL_OFFERS),
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX
    );
    // Offloads are the tap's; vhost's own bits (LOG_ALL, NET_HDR, which would make it
    // strip the header the tap expects) never pass, even if something acked them.
    let odd = acked | (1 << 26) | (1 << 27) | (1 << 28);
    assert_eq!(
        vhost_features(odd, KERNEL_OFFERS),
        vhost_features(acked, KERNEL_OFFERS)
    );
    assert_eq!(
        vhost_features(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_GUEST_CSUM, KERNEL_OFFERS),
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn the_header_vhost_expects_is_the_taps_with_version_1_or_merged_buffers() {
    assert_eq!(vnet_hdr_len(VIRTIO_F_VERSION_1), VNET_HDR_LEN);
    assert_eq!(vnet_hdr_len(VIRTIO_NET_F_MRG_RXBUF), VNET_HDR_LEN);
    assert_eq!(
        vnet_hdr_len(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF),
        12
    );
    assert_eq!(vnet_hdr_len(0), 10);
}

#[test]
fn guest_memory_is_described_by_its_own_mapping() {
    let mem = guest_memory();
    let regions = memory_regions(&mem);
    assert_eq!(regions.len(), 1);
    let r = &regions[0];
    assert_eq!((r.guest_phys_addr, r.memory_size), (0, MEM_SIZE));
    let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap();
    assert_eq!(r.userspace_addr, host as u64);
}

#[test]
fn activation_hands_vhost_the_rings_then_the_tap_and_sets_the_taps_offloads() {
    let log = Log::default();
    let (tap, _host) = fake_tap();
    let tap_fd = tap.as_raw_fd();
    let mut dev = vhost_net(Some(tap), &log, None);
    assert_eq!(log.take(), [Ioctl::Open, Ioctl::GetFeatures]);
    assert_eq!(dev.backend(), NetBackend::Vhost);

    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();
    let acked = all_features(&dev);
    let (a, kicks) = activation(&mem, &rxq, &txq, &irq, acked);
    let irq_fd = irq.irq_evt().as_raw_fd();
    let host = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap() as u64;
    dev.activate(a).unwrap();
    assert!(dev.is_activated());

    let mut expected = vec![
        Ioctl::SetOwner,
        Ioctl::SetFeatures(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX),
        Ioctl::SetMemTable(vec![(0, MEM_SIZE, host)]),
    ];
    expected.extend(vring_calls(0, &rxq, irq_fd));
    expected.extend(vring_calls(1, &txq, irq_fd));
    expected.extend([
        Ioctl::Backend(0, Some(tap_fd)),
        Ioctl::Backend(1, Some(tap_fd)),
    ]);
    assert_eq!(log.take(), expected);
    // Each queue's kick is its notify eventfd, the one KVM signals on a guest notify.
    assert_eq!(kicks[0].read().unwrap(), KICK_MARK);
    assert_eq!(kicks[1].read().unwrap(), KICK_MARK + 1);
    assert_eq!(
        dev.offload(),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
    );
    // vhost writes the irqfd itself: the driver must find "used buffer" when it looks.
    assert_eq!(irq.status(), INT_VRING);
}

#[test]
fn the_guests_offloads_reach_the_tap_as_they_were_acked() {
    let log = Log::default();
    let (tap, _host) = fake_tap();
    let mut dev = vhost_net(Some(tap), &log, None);
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let acked = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4;
    let (a, _) = activation(&mem, &rxq, &txq, &interrupt(), acked);
    dev.activate(a).unwrap();
    assert_eq!(dev.offload(), TUN_F_CSUM | TUN_F_TSO4);
    assert!(log.take().contains(&Ioctl::SetFeatures(VIRTIO_F_VERSION_1)));
    assert!(dev.reset());
    assert_eq!(dev.offload(), 0, "a reset takes them back");
}

#[test]
fn a_late_tap_goes_to_the_running_rings_and_brings_the_link_up() {
    let log = Log::default();
    let dev = Arc::new(Mutex::new(vhost_net(None, &log, None)));
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();
    let (a, _) = activation(&mem, &rxq, &txq, &irq, VIRTIO_F_VERSION_1);
    dev.lock().unwrap().activate(a).unwrap();
    let started = log.take();
    assert!(!started.iter().any(|c| matches!(c, Ioctl::Backend(..))));
    assert!(!dev.lock().unwrap().link_up());

    let attacher = NetAttacher {
        devices: vec![Arc::downgrade(&dev)],
    };
    let (tap, _host) = fake_tap();
    let fd = tap.as_raw_fd();
    std::thread::spawn(move || attacher.attach(0, tap))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        log.take(),
        [Ioctl::Backend(0, Some(fd)), Ioctl::Backend(1, Some(fd))]
    );
    assert!(dev.lock().unwrap().link_up());
    assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
}

#[test]
fn a_tap_vhost_refuses_is_dropped_and_the_link_stays_down() {
    let log = Log::default();
    let mut dev = vhost_net(None, &log, Some("SET_BACKEND"));
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();
    let (a, _) = activation(&mem, &rxq, &txq, &irq, VIRTIO_F_VERSION_1);
    dev.activate(a).unwrap();
    let (tap, _host) = fake_tap();
    let err = dev.attach(tap).unwrap_err();
    assert_eq!(
        err.to_string(),
        "virtio-net 0: vhost-net SET_BACKEND failed: failure in vhost ioctl: Invalid argument (os error 22)"
    );
    assert!(!dev.link_up());
    assert_eq!(irq.status() & INT_CONFIG, 0);
}

#[test]
fn a_tap_refused_by_one_ring_is_taken_back_from_the_others() {
    let log = Log::default();
    let mut dev = vhost_net(None, &log, Some("SET_BACKEND#2"));
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let (a, _) = activation(&mem, &rxq, &txq, &interrupt(), VIRTIO_F_VERSION_1);
    dev.activate(a).unwrap();
    log.take();
    let (tap, _host) = fake_tap();
    let fd = tap.as_raw_fd();
    dev.attach(tap).unwrap_err();
    assert_eq!(
        log.take(),
        [
            Ioctl::Backend(0, Some(fd)),
            Ioctl::Backend(1, Some(fd)),
            Ioctl::Backend(0, None)
        ]
    );
    assert!(!dev.link_up());
    // Nothing to take back at reset.
    assert!(dev.reset());
    assert_eq!(log.take(), [Ioctl::Close]);
}

#[test]
fn reset_takes_the_tap_from_vhost_and_closes_it_and_the_next_activation_opens_another() {
    let log = Log::default();
    let (tap, _host) = fake_tap();
    let fd = tap.as_raw_fd();
    let mut dev = vhost_net(Some(tap), &log, None);
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();
    let (a, _) = activation(&mem, &rxq, &txq, &irq, VIRTIO_F_VERSION_1);
    dev.activate(a).unwrap();
    log.take();

    assert!(dev.reset());
    assert_eq!(
        log.take(),
        [
            Ioctl::Backend(0, None),
            Ioctl::Backend(1, None),
            Ioctl::Close
        ]
    );
    assert!(!dev.is_activated());
    assert_eq!(irq.status(), 0, "no used-buffer bit once vhost is gone");
    assert!(dev.link_up(), "the tap stays with the device");

    let (a, _) = activation(&mem, &rxq, &txq, &irq, VIRTIO_F_VERSION_1);
    dev.activate(a).unwrap();
    let again = log.take();
    assert_eq!(again[..2], [Ioctl::Open, Ioctl::SetOwner]);
    assert_eq!(
        again[again.len() - 2..],
        [Ioctl::Backend(0, Some(fd)), Ioctl::Backend(1, Some(fd))]
    );
    assert_eq!(irq.status(), INT_VRING);
}

#[test]
fn a_failed_start_lets_go_of_vhost_and_leaves_the_status_alone() {
    for what in [
        "SET_OWNER",
        "SET_FEATURES",
        "SET_MEM_TABLE",
        "SET_VRING_ADDR",
        "SET_VRING_CALL",
        "SET_BACKEND",
    ] {
        let log = Log::default();
        let (tap, _host) = fake_tap();
        let mut dev = vhost_net(Some(tap), &log, Some(what));
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let irq = interrupt();
        let (a, _) = activation(&mem, &rxq, &txq, &irq, VIRTIO_F_VERSION_1);
        let err = dev.activate(a).unwrap_err().to_string();
        assert!(err.contains(&format!("vhost-net {what} failed")), "{err}");
        assert_eq!(log.take().last(), Some(&Ioctl::Close), "{what}");
        assert!(!dev.is_activated(), "{what}");
        assert_eq!(irq.status(), 0, "{what}");
        assert_eq!(dev.offload(), 0, "{what}");
    }
}

#[test]
fn a_missing_vhost_net_is_an_error_naming_the_device() {
    let mem = guest_memory();
    let missing: Opener = Box::new(|_| {
        Err(vhost::Error::VhostOpen(std::io::Error::from_raw_os_error(
            libc::ENOENT,
        )))
    });
    let err = Vhost::open(3, &mem, missing).unwrap_err();
    assert!(matches!(err, NetError::VhostOpen { index: 3, .. }));
    assert_eq!(
        err.to_string(),
        "virtio-net 3: cannot open /dev/vhost-net for the vhost-net backend (is the vhost_net module loaded?): No such file or directory (os error 2)"
    );

    // The real thing, where it is missing here.
    if !std::path::Path::new(VHOST_NET_PATH).exists() {
        let config = NetConfig {
            mac: MAC,
            tap: None,
            backend: NetBackend::Vhost,
        };
        let err = Net::new(0, config, &mem).unwrap_err();
        assert!(err.to_string().contains("/dev/vhost-net"), "{err}");
    }
}

#[test]
fn a_vhost_net_without_version_1_is_refused() {
    let log = Log::default();
    let err = Vhost::open(
        0,
        &guest_memory(),
        opener(&log, KERNEL_OFFERS & !VIRTIO_F_VERSION_1, None),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("without VIRTIO_F_VERSION_1"),
        "{err}"
    );
}

#[test]
fn the_device_thread_leaves_the_queues_and_the_tap_to_vhost() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

    let log = Log::default();
    let (tap, host) = fake_tap();
    let dev = Arc::new(Mutex::new(vhost_net(Some(tap), &log, None)));
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    manager.add_subscriber(dev.clone());
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    post_rx_buffers(&rxq, 0, 4, 2048);
    let (a, kicks) = activation(&mem, &rxq, &txq, &interrupt(), VIRTIO_F_VERSION_1);
    dev.lock().unwrap().activate(a).unwrap();
    assert_eq!(manager.run_with_timeout(0).unwrap(), 1, "the update event");
    assert_eq!(kicks[0].read().unwrap(), KICK_MARK, "the fake's");

    // A guest kick and a frame from the host: nothing for the VMM to do.
    kicks[0].write(1).unwrap();
    host_send(&host, &vnet_frame(0, 0, 60, 1));
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
    assert_eq!(kicks[0].read().unwrap(), 1, "the kick is left for vhost");
    assert_eq!(rxq.used().idx().load(), 0);
    assert_eq!(host_recv(&host), None);
}

/// The guest's side, through the virtio-mmio registers: features as vhost allows, the
/// used-buffer status with vhost's direct interrupt, and reset.
#[test]
fn a_driver_drives_a_vhost_device_through_the_transport() {
    use crate::devices::virtio::test_utils::{
        device_features, driver_ok, negotiate, read_reg as rd, setup_queue, write_reg as wr,
        FEATURES_OK,
    };
    use crate::devices::virtio::MmioTransport;

    let log = Log::default();
    let mem = guest_memory();
    let vhost = Vhost::open(
        0,
        &mem,
        opener(&log, KERNEL_OFFERS & !VIRTIO_NET_F_MRG_RXBUF, None),
    )
    .unwrap();
    let config = NetConfig {
        mac: MAC,
        tap: None,
        backend: NetBackend::Vhost,
    };
    let dev = Arc::new(Mutex::new(Net::with_vhost(0, config, Some(vhost)).unwrap()));
    let irq = interrupt();
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
    let mut t = MmioTransport::new(as_virtio, mem.clone(), irq.clone()).unwrap();
    let features = device_features(&mut t);
    assert_eq!(
        features & VIRTIO_NET_F_MRG_RXBUF,
        0,
        "vhost has no MRG_RXBUF"
    );
    assert_eq!(negotiate(&mut t, features), FEATURES_OK);
    let (rxq, txq) = queues(&mem);
    for (i, q) in [(0, &rxq), (1, &txq)] {
        setup_queue(
            &mut t,
            i,
            256,
            [q.desc_table_addr(), q.avail_addr(), q.used_addr()],
        );
    }
    driver_ok(&mut t);
    assert!(dev.lock().unwrap().is_activated());
    assert_eq!(rd(&mut t, 0x60), INT_VRING);
    wr(&mut t, 0x64, INT_VRING);
    assert_eq!(rd(&mut t, 0x60), INT_VRING, "acking does not clear it");

    wr(&mut t, 0x70, 0);
    assert!(!dev.lock().unwrap().is_activated());
    assert_eq!(log.take().last(), Some(&Ioctl::Close));
    assert_eq!(rd(&mut t, 0x60), 0);
}

/// Frames both ways through the kernel's vhost-net and a real tap, with mock rings in
/// guest memory: the VMM only sets things up.
#[test]
fn real_vhost_net_carries_frames_between_the_rings_and_a_tap() {
    const TEST: &str = "real_vhost_net_carries_frames_between_the_rings_and_a_tap";
    if !std::path::Path::new(VHOST_NET_PATH).exists() {
        eprintln!("SKIPPED {TEST}: {VHOST_NET_PATH} is missing (modprobe vhost_net)");
        return;
    }
    in_new_netns(TEST, || {
        use std::time::{Duration, Instant};
        let tap = Tap::open("vtap%d").unwrap();
        let name = tap.name().to_owned();
        set_link_up(&name);
        let host = PacketSocket::bind(if_index(&name));
        let mem = guest_memory();
        let config = NetConfig {
            mac: MAC,
            tap: Some(tap),
            backend: NetBackend::Vhost,
        };
        let mut dev = Net::new(0, config, &mem).unwrap();
        let (rxq, txq) = queues(&mem);
        post_rx_buffers(&rxq, 0, 8, 2048);
        let irq = interrupt();
        let acked = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF;
        let (a, kicks) = activation(&mem, &rxq, &txq, &irq, acked);
        dev.activate(a).unwrap();
        assert_eq!(irq.status(), INT_VRING);

        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // Host to guest: the kernel copies the frame into an rx buffer and interrupts.
        // (The host stack's own IPv6 chatter may come first: look at every buffer.)
        let frame = vnet_frame(0, 0, 100, 0x5a)[VNET_HDR_LEN..].to_vec();
        host.send(&frame);
        let delivered = || {
            (0..usize::from(rxq.used().idx().load())).any(|i| {
                let (id, _) = used(&rxq, i);
                let buf = RX_BUFS + u64::from(id) * 0x1_0000 + VNET_HDR_LEN as u64;
                guest_bytes(&mem, buf, frame.len()) == frame
            })
        };
        wait("our frame did not reach the rx ring", &delivered);
        assert!(irq.irq_evt().read().unwrap() > 0, "vhost wrote the irqfd");

        // Guest to host: a tx chain and a kick.
        let out = vnet_frame(0, 0, 80, 0x3c);
        post_tx_frame(&mem, &txq, 0, TX_BUFS, &out, 40);
        kicks[1].write(1).unwrap();
        assert_eq!(host.recv(Duration::from_secs(5)), out[VNET_HDR_LEN..]);
        wait("the tx chain was not returned", &|| {
            txq.used().idx().load() == 1
        });

        assert!(dev.reset());
        assert_eq!(irq.status(), 0);
    });
}
