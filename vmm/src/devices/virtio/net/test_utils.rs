//! Fixtures for the net tests: guest memory with an rx and a tx mock queue, chains as a
//! driver lays them out, a tap stand-in (a socket pair, which keeps frame boundaries as a
//! tap does), and, for the tests that use a real tap, a fresh network namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use virtio_queue::desc::split::{Descriptor as SplitDescriptor, VirtqUsedElem};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{Net, NetBackend, NetConfig, Tap, ETH_HLEN, QUEUE_SIZE, VNET_HDR_LEN};
use crate::devices::virtio::{Activation, ActiveQueue, Interrupt, VIRTIO_RING_F_EVENT_IDX};

pub const MEM_SIZE: u64 = 0x100_0000;
/// The rx and tx queues' rings.
pub const RXQ: u64 = 0x1_0000;
pub const TXQ: u64 = 0x2_0000;
/// Where tests put rx buffers and tx frames.
pub const RX_BUFS: u64 = 0x10_0000;
pub const TX_BUFS: u64 = 0x80_0000;

pub const MAC: [u8; 6] = [0x02, 0x52, 0x55, 0x4e, 0x4d, 0x01];

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// An ethertype for the IEEE's local experiments: nothing else on a link uses it.
pub const TEST_ETHERTYPE: u16 = 0x88b5;

pub type MockQueue<'a> = MockSplitQueue<'a, GuestMemoryMmap>;

pub fn guest_memory() -> GuestMemoryMmap {
    let len = usize::try_from(MEM_SIZE).unwrap();
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len)]).unwrap()
}

/// The rx and the tx queue, as the driver set them up.
pub fn queues(mem: &GuestMemoryMmap) -> (MockQueue<'_>, MockQueue<'_>) {
    (
        MockSplitQueue::create(mem, GuestAddress(RXQ), QUEUE_SIZE),
        MockSplitQueue::create(mem, GuestAddress(TXQ), QUEUE_SIZE),
    )
}

pub fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

/// What the transport hands the device at DRIVER_OK; the notify eventfds are returned
/// too, for the event-loop tests to kick the queues.
pub fn activation(
    mem: &GuestMemoryMmap,
    rxq: &MockQueue<'_>,
    txq: &MockQueue<'_>,
    interrupt: &Arc<Interrupt>,
    features: u64,
) -> (Activation, [EventFd; 2]) {
    let mut kicks = Vec::new();
    let queues = [rxq, txq]
        .into_iter()
        .map(|q| {
            let mut queue: Queue = q.create_queue().unwrap();
            queue.set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
            let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            kicks.push(notify.try_clone().unwrap());
            ActiveQueue { queue, notify }
        })
        .collect();
    let activation = Activation {
        mem: mem.clone(),
        queues,
        interrupt: interrupt.clone(),
        acked_features: features,
    };
    (activation, kicks.try_into().unwrap())
}

pub fn net(tap: Option<Tap>) -> Net {
    Net::new(
        0,
        NetConfig {
            mac: MAC,
            tap,
            backend: NetBackend::Userspace,
        },
        &guest_memory(),
    )
    .unwrap()
}

/// A tap stand-in and the host's end of it: what one writes, the other reads as one
/// frame. Both ends are non-blocking.
pub fn fake_tap() -> (Tap, File) {
    let (ours, host) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    (Tap::from_fd(ours, "fake0"), File::from(host))
}

/// The next frame the device wrote to the fake tap, if any.
pub fn host_recv(host: &File) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 70_000];
    match (&*host).read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("{e}"),
    }
}

/// Sends a frame to the device through the fake tap.
pub fn host_send(host: &File, frame: &[u8]) {
    assert_eq!((&*host).write(frame).unwrap(), frame.len());
}

/// A virtio-net header with `flags` and `gso_type`, then an Ethernet frame of `len`
/// bytes in all, its payload `fill`.
pub fn vnet_frame(flags: u8, gso_type: u8, len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f[0] = flags;
    f[1] = gso_type;
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.resize(VNET_HDR_LEN + len.max(ETH_HLEN), fill);
    f
}

/// A driver-readable (device-reads) descriptor.
pub fn readable(addr: u64, len: u32) -> RawDescriptor {
    SplitDescriptor::new(addr, len, 0, 0).into()
}

/// A device-writable descriptor.
pub fn writable(addr: u64, len: u32) -> RawDescriptor {
    SplitDescriptor::new(addr, len, VRING_DESC_F_WRITE, 0).into()
}

/// Links `descs` into one chain starting at descriptor `first` and makes it available.
pub fn add_chain(q: &MockQueue<'_>, first: u16, descs: &[RawDescriptor]) {
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

/// Posts `count` rx buffers of `len` bytes each, one descriptor per chain, starting at
/// descriptor `first`; buffer `i` is at `RX_BUFS + i * 0x1_0000`.
pub fn post_rx_buffers(q: &MockQueue<'_>, first: u16, count: u16, len: u32) {
    for i in 0..count {
        let addr = RX_BUFS + u64::from(first + i) * 0x1_0000;
        add_chain(q, first + i, &[writable(addr, len)]);
    }
}

/// Puts `frame` in guest memory at `addr` and makes it available as a tx chain of one
/// descriptor per `split` bytes (the last takes the rest).
pub fn post_tx_frame(
    mem: &GuestMemoryMmap,
    q: &MockQueue<'_>,
    first: u16,
    addr: u64,
    frame: &[u8],
    split: usize,
) {
    mem.write_slice(frame, GuestAddress(addr)).unwrap();
    let descs: Vec<RawDescriptor> = frame
        .chunks(split)
        .scan(addr, |at, chunk| {
            let d = readable(*at, u32::try_from(chunk.len()).unwrap());
            *at += chunk.len() as u64;
            Some(d)
        })
        .collect();
    add_chain(q, first, &descs);
}

/// Used element `i`: the chain's head and the length written.
pub fn used(q: &MockQueue<'_>, i: usize) -> (u32, u32) {
    let e: VirtqUsedElem = q.used().ring().ref_at(i).unwrap().load();
    (e.id(), e.len())
}

/// `len` bytes of guest memory at `addr`.
pub fn guest_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Runs `f` on a thread of its own in a new network namespace (where it may create taps
/// without touching the host's), or says why it cannot and returns: it needs root (or
/// CAP_NET_ADMIN in a user namespace) and /dev/net/tun.
pub fn in_new_netns(test: &str, f: impl FnOnce() + Send + 'static) {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED {test}: /dev/net/tun is missing");
        return;
    }
    let handle = std::thread::spawn(move || {
        // SAFETY: unshare takes flags only; it moves this thread (and none other) into a
        // new network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f();
        Ok(())
    });
    match handle.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("SKIPPED {test}: cannot enter a new network namespace: {e}"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The interface's index in this thread's namespace, 0 if there is none.
pub fn if_index(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> OwnedFd {
    // SAFETY: socket takes no pointers; its result is checked before use.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sets IFF_UP on interface `name`.
pub fn set_link_up(name: &str) {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    // SAFETY: SIOCGIFFLAGS fills in the flags of the ifreq we pass, alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    assert_eq!(ret, 0, "SIOCGIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: SIOCGIFFLAGS set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::c_short::try_from(libc::IFF_UP).unwrap();
    // SAFETY: SIOCSIFFLAGS reads the ifreq we pass, alive for the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(ret, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
}

/// An AF_PACKET socket on one interface for [`TEST_ETHERTYPE`] frames: the host's
/// side of a tap.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    pub fn bind(ifindex: u32) -> Self {
        let proto = TEST_ETHERTYPE.to_be();
        let fd = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::c_int::from(proto),
        );
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::c_ushort::try_from(libc::AF_PACKET).unwrap();
        addr.sll_protocol = proto;
        addr.sll_ifindex = libc::c_int::try_from(ifindex).unwrap();
        let len = libc::socklen_t::try_from(std::mem::size_of_val(&addr)).unwrap();
        // SAFETY: `addr` is a sockaddr_ll of `len` bytes, alive for the call.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&addr).cast::<libc::sockaddr>(),
                len,
            )
        };
        assert_eq!(ret, 0, "bind: {}", std::io::Error::last_os_error());
        Self(fd)
    }

    /// Sends a whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a live buffer of `frame.len()` bytes.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame the interface received, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if let Ok(n) = usize::try_from(n) {
                return buf[..n].to_vec();
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "recv: {e}");
            assert!(Instant::now() < deadline, "no frame within {timeout:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
