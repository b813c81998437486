//! virtio-fs against a fake vhost-user backend, driven through the real virtio-mmio
//! transport and the device thread's event loop.

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::fs::test_utils::{spawn, FakeBackend, Running, VIRTIOFSD_FEATURES};
use crate::devices::virtio::fs::vhost_user::Session;
use crate::devices::virtio::fs::{VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_RING_F_INDIRECT_DESC};
use crate::devices::virtio::interrupt::INT_VRING;
use crate::devices::virtio::test_utils::{
    device_features, driver_ok, negotiate, read_reg, setup_queue, write_reg, FEATURES_OK,
};
use crate::devices::virtio::{status, MmioTransport, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::vstate::memory::{create_guest_memory, Backing};

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

const TAG: &str = "shared";
const SOCKET: &str = "/run/fake-virtiofsd.sock";
const MEM_SIZE: u64 = 16 << 20;
/// The size the driver picks for both queues (smaller than the maximum).
const DRIVER_QUEUE_SIZE: u16 = 256;

/// Ring addresses of queue `i`: descriptors, available ring, used ring.
fn rings(i: u64) -> [GuestAddress; 3] {
    let base = 0x10_0000 * (i + 1);
    [
        GuestAddress(base),
        GuestAddress(base + 0x1_0000),
        GuestAddress(base + 0x2_0000),
    ]
}

fn session(fake: FakeBackend) -> (Result<Session, FsError>, Running) {
    let (stream, running) = spawn(fake);
    let timeout = Duration::from_secs(5);
    (
        Session::from_stream(TAG, Path::new(SOCKET), stream, timeout),
        running,
    )
}

struct Fixture {
    fake: Running,
    dev: Arc<Mutex<Fs>>,
    transport: MmioTransport,
    mem: GuestMemoryMmap,
    irq: Arc<Interrupt>,
    manager: EventManager<Subscriber>,
}

fn fixture_with(fake: FakeBackend, backing: Backing) -> Fixture {
    let (session, fake) = session(fake);
    let dev = Arc::new(Mutex::new(
        Fs::with_session(TAG.into(), session.unwrap()).unwrap(),
    ));
    let mem = create_guest_memory(MEM_SIZE, backing).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
    let transport = MmioTransport::new(as_virtio, mem.clone(), irq.clone()).unwrap();
    let mut manager = EventManager::<Subscriber>::new().unwrap();
    manager.add_subscriber(dev.clone());
    Fixture {
        fake,
        dev,
        transport,
        mem,
        irq,
        manager,
    }
}

fn fixture() -> Fixture {
    fixture_with(FakeBackend::default(), Backing::SharedMemfd)
}

impl Fixture {
    /// The Linux driver's set-up: accept every feature offered, both queues, DRIVER_OK.
    /// Returns the status the device ends with.
    fn driver_starts_device(&mut self) -> u32 {
        let t = &mut self.transport;
        let features = device_features(t);
        assert_eq!(negotiate(t, features), FEATURES_OK);
        for i in 0..=NUM_REQUEST_QUEUES {
            write_reg(t, 0x30, i);
            assert_eq!(read_reg(t, 0x34), u32::from(QUEUE_SIZE));
            setup_queue(t, i, DRIVER_QUEUE_SIZE, rings(u64::from(i)));
        }
        driver_ok(t);
        read_reg(t, 0x70)
    }

    fn run(&mut self) -> usize {
        self.manager.run_with_timeout(0).unwrap()
    }

    fn log(&self) -> Vec<&'static str> {
        self.fake.state().log.clone()
    }

    fn host_address(&self, addr: GuestAddress) -> u64 {
        self.mem.get_host_address(addr).unwrap() as u64
    }
}

/// Reads an eventfd handed to the fake backend (a `File` there).
fn read_eventfd(mut file: &std::fs::File) -> Option<u64> {
    let mut b = [0u8; 8];
    match file.read(&mut b) {
        Ok(8) => Some(u64::from_ne_bytes(b)),
        _ => None,
    }
}

fn write_eventfd(mut file: &std::fs::File) {
    file.write_all(&1u64.to_ne_bytes()).unwrap();
}

#[test]
fn config_space_holds_the_tag_and_one_request_queue() {
    let f = fixture();
    let dev = f.dev.lock().unwrap();
    assert_eq!(dev.device_type(), TYPE_FS);
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut cfg = [0xffu8; CONFIG_LEN];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..TAG.len()], TAG.as_bytes());
    assert!(
        cfg[TAG.len()..TAG_LEN].iter().all(|&b| b == 0),
        "NUL padded"
    );
    assert_eq!(cfg[TAG_LEN..], 1u32.to_le_bytes());
    // Narrow reads, and reads past the end.
    let mut b = [0u8; 2];
    dev.read_config(1, &mut b);
    assert_eq!(&b, b"ha");
    let mut b = [0xffu8; 4];
    dev.read_config(CONFIG_LEN as u64 - 2, &mut b);
    assert_eq!(b, [0, 0, 0, 0]);
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4]);
}

#[test]
fn a_full_length_tag_has_no_nul() {
    let tag = "t".repeat(TAG_LEN);
    let c = config_space(&tag);
    assert_eq!(&c[..TAG_LEN], tag.as_bytes());
    assert_eq!(c[TAG_LEN..], NUM_REQUEST_QUEUES.to_le_bytes());
    // Longer tags are refused by validation; here they are cut, never overflow.
    let c = config_space(&"u".repeat(100));
    assert_eq!(c[TAG_LEN..], 1u32.to_le_bytes());
}

#[test]
fn the_guest_sees_only_virtio_features_we_allow() {
    assert_eq!(guest_features(u64::MAX), GUEST_FEATURES_ALLOWED);
    assert_eq!(
        guest_features(VIRTIOFSD_FEATURES | 1),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX
    );
    let mut f = fixture();
    let offered = device_features(&mut f.transport);
    assert_eq!(offered & VHOST_USER_F_PROTOCOL_FEATURES, 0);
    assert_eq!(offered & (1 << 26), 0, "LOG_ALL is vhost-user's");
    assert_eq!(
        offered,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX
    );
}

#[test]
fn the_handshake_uses_only_mq_and_reply_ack() {
    let (session, fake) = session(FakeBackend::default());
    let session = session.unwrap();
    assert_eq!(
        fake.state().log,
        [
            "SET_OWNER",
            "GET_FEATURES",
            "GET_PROTOCOL_FEATURES",
            "SET_PROTOCOL_FEATURES",
            "GET_QUEUE_NUM"
        ]
    );
    let used = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
    assert_eq!(fake.state().acked_protocol_features, used.bits());
    assert_eq!(session.protocol_features(), used);
    assert_eq!(session.backend_features(), VIRTIOFSD_FEATURES);
}

#[test]
fn a_backend_without_version_1_is_refused_naming_the_socket() {
    let (session, _fake) = session(FakeBackend {
        features: VIRTIO_RING_F_EVENT_IDX,
        ..Default::default()
    });
    let err = session.unwrap_err().to_string();
    assert!(err.contains(SOCKET), "{err}");
    assert!(err.contains("VIRTIO_F_VERSION_1"), "{err}");
}

#[test]
fn a_backend_with_too_few_queues_is_refused() {
    let (session, _fake) = session(FakeBackend {
        queue_num: 1,
        ..Default::default()
    });
    let err = session.unwrap_err().to_string();
    assert!(err.contains("has 1 queues; virtio-fs needs 2"), "{err}");
}

#[test]
fn a_backend_that_hangs_up_during_the_handshake_is_an_error() {
    let (session, _fake) = session(FakeBackend {
        refuse: Some("GET_FEATURES"),
        ..Default::default()
    });
    let err = session.unwrap_err();
    assert!(matches!(err, FsError::Backend { what, .. } if what.contains("GET_FEATURES")));
}

#[test]
fn a_backend_that_does_not_answer_is_given_up_after_the_timeout() {
    // The peer reads nothing and answers nothing.
    let (ours, _theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let start = Instant::now();
    let err =
        Session::from_stream(TAG, Path::new(SOCKET), ours, Duration::from_millis(100)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(err, FsError::Timeout { what, .. } if what.contains("GET_FEATURES")),
        "{err}"
    );
    assert!(
        err.to_string().contains("did not report its features"),
        "{err}"
    );
}

#[test]
fn connect_waits_for_a_backend_that_starts_late() {
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let path = dir.as_path().join("late.sock");
    let listen_at = path.clone();
    let backend = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let listener = UnixListener::bind(&listen_at).unwrap();
        let (stream, _) = listener.accept().unwrap();
        let mut handler = vhost::vhost_user::BackendReqHandler::from_stream(
            stream,
            Arc::new(Mutex::new(FakeBackend::default())),
        );
        while handler.handle_request().is_ok() {}
    });
    let session = Session::connect_within(TAG, &path, Duration::from_secs(10)).unwrap();
    assert_eq!(session.backend_features(), VIRTIOFSD_FEATURES);
    drop(session);
    backend.join().unwrap();
}

#[test]
fn connect_gives_up_after_its_timeout_naming_the_socket() {
    let start = Instant::now();
    let err = Session::connect_within(
        TAG,
        Path::new("/nonexistent/virtiofsd.sock"),
        Duration::from_millis(100),
    )
    .unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(matches!(err, FsError::Connect { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("/nonexistent/virtiofsd.sock"), "{err}");
    assert!(err.contains("\"shared\""), "{err}");
}

#[test]
fn activation_hands_the_backend_shared_memory_rings_and_eventfds() {
    let mut f = fixture();
    assert_eq!(f.driver_starts_device() & status::DEVICE_NEEDS_RESET, 0);
    assert!(f.dev.lock().unwrap().is_activated());

    let mut expected = vec!["SET_FEATURES", "SET_MEM_TABLE"];
    for _ in 0..NUM_QUEUES {
        expected.extend([
            "SET_VRING_NUM",
            "SET_VRING_ADDR",
            "SET_VRING_BASE",
            "SET_VRING_CALL",
            "SET_VRING_KICK",
            "SET_VRING_ENABLE",
        ]);
    }
    assert_eq!(f.log()[5..], expected);

    let fake = f.fake.state();
    // The driver's features, and the vhost-user bit that enables the protocol features.
    assert_eq!(
        fake.acked_features,
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES
    );

    // One region: all of guest RAM, as our mapping of it and its memfd.
    assert_eq!(fake.regions.len(), 1);
    let (gpa, size, user, offset) = fake.regions[0];
    assert_eq!((gpa, size, offset), (0, MEM_SIZE, 0));
    assert_eq!(user, f.host_address(GuestAddress(0)));
    let memfd = &fake.mem_files[0];
    f.mem
        .write_slice(b"guest bytes", GuestAddress(0x4321))
        .unwrap();
    let mut seen = [0u8; 11];
    memfd.read_exact_at(&mut seen, 0x4321).unwrap();
    assert_eq!(&seen, b"guest bytes", "the backend's fd is the guest's RAM");

    for (i, vring) in fake.vrings.iter().enumerate() {
        let [desc, avail, used] = rings(i as u64);
        assert_eq!(vring.num, u32::from(DRIVER_QUEUE_SIZE));
        assert_eq!(
            vring.addr,
            (
                f.host_address(desc),
                f.host_address(used),
                f.host_address(avail)
            ),
            "ring addresses are ours, not the guest's"
        );
        assert_eq!(vring.base, 0);
        assert!(vring.enabled);
    }

    // A guest kick (here an MMIO write, as without ioeventfd) reaches the backend's
    // kick eventfd: it is the transport's notify eventfd itself.
    let kick1 = fake.vrings[1].kick.as_ref().unwrap().try_clone().unwrap();
    let call0 = fake.vrings[0].call.as_ref().unwrap().try_clone().unwrap();
    drop(fake);
    write_reg(&mut f.transport, 0x50, 1);
    assert_eq!(read_eventfd(&kick1), Some(1));

    // A backend call becomes a used-buffer interrupt, once the event loop has the call
    // eventfds (after the activation event).
    assert_eq!(f.run(), 1, "activation event");
    assert_eq!(read_reg(&mut f.transport, 0x60), 0);
    write_eventfd(&call0);
    assert_eq!(f.run(), 1, "call event");
    assert_eq!(read_reg(&mut f.transport, 0x60), INT_VRING);
    assert_eq!(f.irq.irq_evt().read().unwrap(), 1);
    assert_eq!(f.run(), 0, "the call eventfd was drained");
}

#[test]
fn reset_stops_the_vrings_and_a_new_activation_starts_them_again() {
    let mut f = fixture();
    f.driver_starts_device();
    f.run();
    let old_call = f.fake.state().vrings[0]
        .call
        .as_ref()
        .unwrap()
        .try_clone()
        .unwrap();

    write_reg(&mut f.transport, 0x70, 0);
    assert_eq!(read_reg(&mut f.transport, 0x70), 0);
    assert!(!f.dev.lock().unwrap().is_activated());
    let log = f.log();
    assert_eq!(log[log.len() - 2..], ["GET_VRING_BASE", "GET_VRING_BASE"]);
    assert_eq!(f.run(), 1, "reset event");
    assert!(f.dev.lock().unwrap().registered_calls.is_empty());
    write_eventfd(&old_call);
    assert_eq!(f.run(), 0, "an old call eventfd is no longer watched");
    assert_eq!(f.irq.status(), 0);

    let before = f.log().len();
    assert_eq!(f.driver_starts_device() & status::DEVICE_NEEDS_RESET, 0);
    let log = f.log();
    assert_eq!(log[before..before + 2], ["SET_FEATURES", "SET_MEM_TABLE"]);
    assert!(f.fake.state().vrings.iter().all(|v| v.enabled));
    assert_eq!(f.run(), 1);
    let call1 = f.fake.state().vrings[1]
        .call
        .as_ref()
        .unwrap()
        .try_clone()
        .unwrap();
    write_eventfd(&call1);
    assert_eq!(f.run(), 1);
    assert_eq!(f.irq.status(), INT_VRING);
}

#[test]
fn without_protocol_features_there_is_no_vring_enable() {
    let mut f = fixture_with(
        FakeBackend {
            features: VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
            ..Default::default()
        },
        Backing::SharedMemfd,
    );
    assert_eq!(f.log(), ["SET_OWNER", "GET_FEATURES"]);
    assert_eq!(f.driver_starts_device() & status::DEVICE_NEEDS_RESET, 0);
    // Without REPLY_ACK nothing is acknowledged: wait for the fake to catch up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let kicks = |log: &[&str]| log.iter().filter(|m| **m == "SET_VRING_KICK").count();
    while kicks(&f.log()) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let log = f.log();
    assert_eq!(kicks(&log), 2, "{log:?}");
    assert!(!log.contains(&"SET_VRING_ENABLE"), "{log:?}");
    assert_eq!(
        f.fake.state().acked_features,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
}

#[test]
fn private_memory_cannot_be_handed_over_and_the_device_needs_reset() {
    let mut f = fixture_with(FakeBackend::default(), Backing::Anonymous);
    let status = f.driver_starts_device();
    assert_ne!(status & status::DEVICE_NEEDS_RESET, 0);
    assert!(!f.dev.lock().unwrap().is_activated());
    assert!(!f.log().contains(&"SET_MEM_TABLE"));
}

#[test]
fn a_refused_message_fails_activation_and_the_session() {
    let mut f = fixture_with(
        FakeBackend {
            refuse: Some("SET_VRING_ADDR"),
            ..Default::default()
        },
        Backing::SharedMemfd,
    );
    let status = f.driver_starts_device();
    assert_ne!(status & status::DEVICE_NEEDS_RESET, 0);
    let dev = f.dev.lock().unwrap();
    assert!(!dev.is_activated());
    let why = dev.session().failed().unwrap();
    assert!(why.contains("SET_VRING_ADDR"), "{why}");
}

#[test]
fn a_backend_that_goes_away_is_logged_and_the_vm_goes_on() {
    let mut f = fixture();
    f.driver_starts_device();
    assert_eq!(f.run(), 1, "activation event");
    let Fixture {
        fake,
        dev,
        mut transport,
        mut manager,
        ..
    } = f;
    fake.hang_up();
    assert_eq!(manager.run_with_timeout(1000).unwrap(), 1, "hang-up event");
    assert!(!dev.lock().unwrap().watching_backend);
    assert_eq!(manager.run_with_timeout(0).unwrap(), 0, "no longer watched");

    // The driver resets and tries again: errors, no panic, no hang.
    write_reg(&mut transport, 0x70, 0);
    assert_eq!(read_reg(&mut transport, 0x70), 0);
    let features = device_features(&mut transport);
    negotiate(&mut transport, features);
    for i in 0..=NUM_REQUEST_QUEUES {
        setup_queue(&mut transport, i, DRIVER_QUEUE_SIZE, rings(u64::from(i)));
    }
    driver_ok(&mut transport);
    assert_ne!(
        read_reg(&mut transport, 0x70) & status::DEVICE_NEEDS_RESET,
        0
    );
    assert!(dev.lock().unwrap().session().failed().is_some());
}

#[test]
fn activation_needs_both_queues() {
    let mut f = fixture();
    let t = &mut f.transport;
    let features = device_features(t);
    negotiate(t, features);
    setup_queue(t, 0, DRIVER_QUEUE_SIZE, rings(0));
    driver_ok(t);
    assert_ne!(read_reg(t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!f.log().contains(&"SET_FEATURES"));
}
