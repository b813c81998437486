//! A simulated guest for the vsock tests: a driver that posts rx buffers and tx packets on
//! virtio-queue's mock split queues, and a harness that runs the device in a real
//! event-manager loop against real Unix sockets.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{
    Vsock, VsockConfig, HOST_CID, NUM_QUEUES, OP_CREDIT_UPDATE, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX,
    TYPE_STREAM,
};
use crate::devices::virtio::{Activation, ActiveQueue, Interrupt, VirtioDevice};

pub(crate) const GUEST_CID: u64 = 3;
pub(crate) const HDR_LEN: usize = 44;
/// Guest memory: queues low, then a 128 KiB slot per descriptor for rx and for tx buffers,
/// then scratch space for hand-made descriptors.
pub(crate) const MEM_SIZE: u64 = 0x600_0000;
const QUEUE_ADDRS: [u64; NUM_QUEUES] = [0x1_0000, 0x2_0000, 0x3_0000];
const SLOT: u64 = 0x2_0000;
const RX_BUFS: u64 = 0x100_0000;
const TX_BUFS: u64 = 0x300_0000;
pub(crate) const SCRATCH: u64 = 0x500_0000;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;

pub(crate) fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_SIZE).unwrap())]).unwrap()
}

/// A vsock header as the guest driver writes and reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// A packet from guest port `src_port` to host port `dst_port`.
    pub fn guest(op: u16, src_port: u32, dst_port: u32) -> Self {
        Self {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 64 * 1024,
            ..Self::default()
        }
    }

    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// One descriptor as the test asks for it: None for the address means "this descriptor's
/// own buffer slot".
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc {
    pub addr: Option<u64>,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    pub fn slot(len: u32, write: bool) -> Self {
        Self {
            addr: None,
            len,
            write,
        }
    }

    pub fn at(addr: u64, len: u32, write: bool) -> Self {
        Self {
            addr: Some(addr),
            len,
            write,
        }
    }
}

/// One queue seen from the driver, built from virtio-queue's mock parts. The rings are laid
/// out here rather than by `MockSplitQueue::create`, which (in 0.18) places the used ring
/// over the second half of the available ring.
struct Ring<'a> {
    desc: DescriptorTable<'a, GuestMemoryMmap>,
    avail: AvailRing<'a, GuestMemoryMmap>,
    used: UsedRing<'a, GuestMemoryMmap>,
    addrs: [u64; 3],
    bufs: u64,
    free: Vec<u16>,
    /// Posted chains by head: each descriptor's index, address and length.
    chains: HashMap<u16, Vec<(u16, u64, u32)>>,
    avail_idx: u16,
    used_seen: u16,
}

impl<'a> Ring<'a> {
    fn new(mem: &'a GuestMemoryMmap, addr: u64, bufs: u64) -> Self {
        let addrs = [addr, addr + 0x1000, addr + 0x2000];
        // A driver starts from zeroed rings, also after another driver's reset.
        mem.write_slice(&[0u8; 0x3000], GuestAddress(addr)).unwrap();
        Self {
            desc: DescriptorTable::new(mem, GuestAddress(addrs[0]), QUEUE_SIZE),
            avail: AvailRing::new(mem, GuestAddress(addrs[1]), QUEUE_SIZE),
            used: UsedRing::new(mem, GuestAddress(addrs[2]), QUEUE_SIZE),
            addrs,
            bufs,
            free: (0..QUEUE_SIZE).rev().collect(),
            chains: HashMap::new(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device's view of this queue, as the transport would set it up.
    fn queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).unwrap();
        let split = |a: u64| (Some((a & 0xffff_ffff) as u32), Some((a >> 32) as u32));
        let (lo, hi) = split(self.addrs[0]);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.addrs[1]);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.addrs[2]);
        q.set_used_ring_address(lo, hi);
        q.set_ready(true);
        q
    }

    /// Writes a chain into the descriptor table and makes it available; returns each
    /// descriptor's (address, length).
    fn post(&mut self, descs: &[Desc]) -> Vec<(u64, u32)> {
        assert!(
            self.free.len() >= descs.len(),
            "test ran out of descriptors"
        );
        let idxs: Vec<u16> = descs.iter().map(|_| self.free.pop().unwrap()).collect();
        let mut chain = Vec::new();
        for (i, (&idx, d)) in idxs.iter().zip(descs).enumerate() {
            let addr = d.addr.unwrap_or(self.bufs + u64::from(idx) * SLOT);
            let mut flags = if d.write { DESC_F_WRITE } else { 0 };
            let next = match idxs.get(i + 1) {
                Some(&n) => {
                    flags |= DESC_F_NEXT;
                    n
                }
                None => 0,
            };
            let desc = SplitDescriptor::new(addr, d.len, flags, next);
            self.desc.store(idx, RawDescriptor::from(desc)).unwrap();
            chain.push((idx, addr, d.len));
        }
        let slot = usize::from(self.avail_idx % QUEUE_SIZE);
        self.avail.ring().ref_at(slot).unwrap().store(idxs[0]);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.avail.idx().store(self.avail_idx);
        let out = chain.iter().map(|&(_, a, l)| (a, l)).collect();
        self.chains.insert(idxs[0], chain);
        out
    }

    /// Chains the device returned since the last call: (descriptors, used length).
    fn take_used(&mut self) -> Vec<(Vec<(u64, u32)>, u32)> {
        let used_idx = self.used.idx().load();
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let slot = usize::from(self.used_seen % QUEUE_SIZE);
            let elem = self.used.ring().ref_at(slot).unwrap().load();
            self.used_seen = self.used_seen.wrapping_add(1);
            let head = u16::try_from(elem.id()).unwrap();
            let Some(chain) = self.chains.remove(&head) else {
                panic!(
                    "ring at {:#x}: device used chain {head} (len {}) never posted; posted {:?}",
                    self.bufs,
                    elem.len(),
                    self.chains.keys().collect::<Vec<_>>()
                );
            };
            self.free.extend(chain.iter().map(|&(i, _, _)| i));
            out.push((chain.iter().map(|&(_, a, l)| (a, l)).collect(), elem.len()));
        }
        out
    }

    fn pending(&self) -> usize {
        self.chains.len()
    }
}

/// The guest driver.
pub(crate) struct TestGuest<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub interrupt: Arc<Interrupt>,
    notify: Vec<EventFd>,
    rx: Ring<'a>,
    tx: Ring<'a>,
    _evq: Ring<'a>,
}

impl<'a> TestGuest<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self {
            mem,
            interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
            notify: (0..NUM_QUEUES)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
            rx: Ring::new(mem, QUEUE_ADDRS[0], RX_BUFS),
            tx: Ring::new(mem, QUEUE_ADDRS[1], TX_BUFS),
            _evq: Ring::new(mem, QUEUE_ADDRS[2], SCRATCH),
        }
    }

    /// What the transport would hand the device at DRIVER_OK.
    pub fn activation(&self) -> Activation {
        let queues = [&self.rx, &self.tx, &self._evq]
            .iter()
            .zip(&self.notify)
            .map(|(ring, notify)| ActiveQueue {
                queue: ring.queue(),
                notify: notify.try_clone().unwrap(),
            })
            .collect();
        Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: crate::devices::virtio::VIRTIO_F_VERSION_1,
        }
    }

    /// Where queue `index` lives: descriptor table, available ring, used ring.
    pub fn ring_addrs(&self, index: usize) -> [u64; 3] {
        [&self.rx, &self.tx, &self._evq][index].addrs
    }

    /// Notifies queue `index`, as the driver's QueueNotify write would.
    pub fn kick(&self, index: usize) {
        self.notify[index].write(1).unwrap();
    }

    /// Posts `n` rx buffers, each a header descriptor and a `data`-byte descriptor.
    pub fn post_rx(&mut self, n: usize, data: u32) {
        for _ in 0..n {
            let hdr = u32::try_from(HDR_LEN).unwrap();
            self.rx
                .post(&[Desc::slot(hdr, true), Desc::slot(data, true)]);
        }
        self.kick(RXQ_INDEX);
    }

    /// Posts `n` rx buffers of one descriptor holding header and data (Linux 6.2+).
    pub fn post_rx_single(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            self.rx.post(&[Desc::slot(size, true)]);
        }
        self.kick(RXQ_INDEX);
    }

    /// Posts one hand-made rx chain.
    pub fn post_rx_raw(&mut self, descs: &[Desc]) {
        self.rx.post(descs);
        self.kick(RXQ_INDEX);
    }

    pub fn rx_posted(&self) -> usize {
        self.rx.pending()
    }

    /// Packets the device put in rx buffers since the last call, with each buffer's used
    /// length checked against the header.
    pub fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        self.recv_raw()
            .into_iter()
            .map(|(hdr, data, used)| {
                let hdr = hdr.expect("device used an rx buffer without a packet");
                assert_eq!(used as usize, HDR_LEN + data.len(), "used length");
                (hdr, data)
            })
            .collect()
    }

    /// Like `recv`, also returning buffers the device handed back empty (used length 0).
    pub fn recv_raw(&mut self) -> Vec<(Option<Hdr>, Vec<u8>, u32)> {
        let mem = self.mem;
        self.rx
            .take_used()
            .into_iter()
            .map(|(chain, used)| {
                if used == 0 {
                    return (None, Vec::new(), 0);
                }
                let mut raw = [0u8; HDR_LEN];
                mem.read_slice(&mut raw, GuestAddress(chain[0].0)).unwrap();
                let hdr = Hdr::from_bytes(&raw);
                let data_addr = match chain.get(1) {
                    Some(&(addr, _)) => addr,
                    None => chain[0].0 + HDR_LEN as u64,
                };
                let mut data = vec![0u8; hdr.len as usize];
                mem.read_slice(&mut data, GuestAddress(data_addr)).unwrap();
                (Some(hdr), data, used)
            })
            .collect()
    }

    /// Sends a packet: header and data in separate descriptors (data only if any).
    pub fn send(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = u32::try_from(data.len()).unwrap();
        let hdr_len = u32::try_from(HDR_LEN).unwrap();
        let chain = if data.is_empty() {
            self.tx.post(&[Desc::slot(hdr_len, false)])
        } else {
            self.tx
                .post(&[Desc::slot(hdr_len, false), Desc::slot(hdr.len, false)])
        };
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(chain[0].0))
            .unwrap();
        if let Some(&(addr, _)) = chain.get(1) {
            self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        }
        self.kick(TXQ_INDEX);
    }

    /// Sends a packet with header and data in one descriptor.
    pub fn send_single(&mut self, mut hdr: Hdr, data: &[u8]) {
        hdr.len = u32::try_from(data.len()).unwrap();
        let total = u32::try_from(HDR_LEN + data.len()).unwrap();
        let chain = self.tx.post(&[Desc::slot(total, false)]);
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(data);
        self.mem
            .write_slice(&bytes, GuestAddress(chain[0].0))
            .unwrap();
        self.kick(TXQ_INDEX);
    }

    /// Sends a packet as a nonlinear Linux skb goes out: the header alone, then the payload
    /// in `piece`-byte descriptors.
    pub fn send_scattered(&mut self, mut hdr: Hdr, data: &[u8], piece: usize) {
        hdr.len = u32::try_from(data.len()).unwrap();
        let mut descs = vec![Desc::slot(u32::try_from(HDR_LEN).unwrap(), false)];
        for chunk in data.chunks(piece) {
            descs.push(Desc::slot(u32::try_from(chunk.len()).unwrap(), false));
        }
        let chain = self.tx.post(&descs);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(chain[0].0))
            .unwrap();
        for (chunk, &(addr, _)) in data.chunks(piece).zip(&chain[1..]) {
            self.mem.write_slice(chunk, GuestAddress(addr)).unwrap();
        }
        self.kick(TXQ_INDEX);
    }

    /// Posts one hand-made tx chain (the test wrote whatever memory it points at).
    pub fn send_raw(&mut self, descs: &[Desc]) {
        self.tx.post(descs);
        self.kick(TXQ_INDEX);
    }

    /// Free tx descriptors (after `tx_used` reclaimed the returned ones).
    pub fn tx_free(&self) -> usize {
        self.tx.free.len()
    }

    /// The tx ring's avail_event: where the device asked to be notified next (EVENT_IDX).
    pub fn tx_avail_event(&self) -> u16 {
        let addr = self.tx.addrs[2] + 4 + 8 * u64::from(QUEUE_SIZE);
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// How many tx chains the device returned since the last call.
    pub fn tx_used(&mut self) -> usize {
        self.tx.take_used().len()
    }
}

/// A unique, short directory for a test's sockets, removed on drop.
#[derive(Debug)]
pub(crate) struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/runm-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A device in an event loop, activated by a `TestGuest`.
pub(crate) struct Harness<'a> {
    pub em: EventManager<Arc<Mutex<Vsock>>>,
    pub dev: Arc<Mutex<Vsock>>,
    pub guest: TestGuest<'a>,
    pub uds: PathBuf,
    /// Packets received but not yet looked at.
    inbox: std::collections::VecDeque<(Hdr, Vec<u8>)>,
    _dir: TestDir,
}

impl<'a> Harness<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        let dir = TestDir::new();
        let uds = dir.path("vsock");
        let dev = Vsock::new(VsockConfig {
            guest_cid: u32::try_from(GUEST_CID).unwrap(),
            uds_path: uds.clone(),
        })
        .unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let guest = TestGuest::new(mem);
        dev.lock().unwrap().activate(guest.activation()).unwrap();
        let mut h = Self {
            em,
            dev,
            guest,
            uds,
            inbox: std::collections::VecDeque::new(),
            _dir: dir,
        };
        h.pump();
        h
    }

    /// The driver reset the device (status 0), as the transport passes it on.
    pub fn reset_device(&mut self) {
        assert!(self.dev.lock().unwrap().reset(), "the device can be reset");
        self.inbox.clear();
        self.pump();
    }

    /// A new driver sets the device up again after a reset, with fresh rings.
    pub fn reactivate(&mut self) {
        self.guest = TestGuest::new(self.guest.mem);
        self.dev
            .lock()
            .unwrap()
            .activate(self.guest.activation())
            .unwrap();
        self.pump();
    }

    /// Path of the host service for guest connections to `port`.
    pub fn service_path(&self, port: u32) -> PathBuf {
        let mut p = self.uds.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Runs the event loop until it has nothing more to do right now.
    pub fn pump(&mut self) {
        for _ in 0..1000 {
            if self.em.run_with_timeout(0).unwrap() == 0 {
                return;
            }
        }
    }

    /// Runs the event loop until `f` returns Some (collecting from the guest), or panics
    /// after 10 s.
    pub fn until<T>(&mut self, what: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.em.run_with_timeout(5).unwrap();
            self.pump();
            if let Some(v) = f(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    }

    /// Packets received so far and not yet looked at.
    pub fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
        let mut all: Vec<_> = self.inbox.drain(..).collect();
        all.extend(self.guest.recv());
        all
    }

    /// Waits for the next packet on rx.
    pub fn next_packet(&mut self) -> (Hdr, Vec<u8>) {
        self.until("an rx packet", |h| {
            let got = h.guest.recv();
            h.inbox.extend(got);
            h.inbox.pop_front()
        })
    }

    /// Asserts that the device sent nothing after the loop settled.
    pub fn expect_silence(&mut self) {
        for _ in 0..5 {
            self.em.run_with_timeout(5).unwrap();
        }
        self.pump();
        assert_eq!(self.inbox, [], "unexpected rx packets");
        assert_eq!(self.guest.recv_raw().len(), 0, "unexpected rx packets");
    }

    /// Sends a CREDIT_UPDATE for a guest stream.
    pub fn credit_update(&mut self, src_port: u32, dst_port: u32, buf_alloc: u32, fwd_cnt: u32) {
        let mut h = Hdr::guest(OP_CREDIT_UPDATE, src_port, dst_port);
        h.buf_alloc = buf_alloc;
        h.fwd_cnt = fwd_cnt;
        self.guest.send(h, &[]);
    }
}
