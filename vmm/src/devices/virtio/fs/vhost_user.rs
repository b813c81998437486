//! The vhost-user session with one backend, built on the `vhost` crate's [`Frontend`].
//!
//! - [`Session::connect`] (at VM build): connect, SET_OWNER, GET_FEATURES, and the
//!   protocol-feature handshake when the backend offers it. We accept only MQ (to check
//!   the backend has our queues) and REPLY_ACK (so that a refused message is an error
//!   here, not a silent stall).
//! - [`Session::start`] (at DRIVER_OK): SET_FEATURES, SET_MEM_TABLE, then per queue
//!   SET_VRING_NUM/ADDR/BASE/CALL/KICK and SET_VRING_ENABLE.
//! - [`Session::stop`] (at a driver reset): GET_VRING_BASE per queue, which stops it.
//!
//! vhost-user ring addresses are the frontend's own virtual addresses (the backend
//! translates them through the `user_addr` of each SET_MEM_TABLE region), so the guest
//! addresses the driver wrote are translated here, after checking each ring lies inside
//! one region.
//!
//! Every exchange (a message and its reply) is bounded by [`BACKEND_TIMEOUT`]: the
//! `vhost` crate retries a socket read that times out, so socket timeouts cannot bound
//! it; instead a [`Watchdog`] thread shuts the socket down when an exchange overruns,
//! which ends the blocked read or write with an error. After any failure the session is
//! not used again.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{
    FsError, BACKEND_TIMEOUT, CONNECT_TIMEOUT, NUM_QUEUES, VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// How often a connection to a backend that is not listening yet is retried.
const CONNECT_RETRY: Duration = Duration::from_millis(20);

/// The protocol features we use when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

/// One queue as the backend gets it.
#[derive(Debug)]
pub struct VringSetup<'a> {
    pub queue: &'a Queue,
    /// Signalled by KVM when the guest notifies the queue.
    pub kick: &'a EventFd,
    /// Signalled by the backend when it has used buffers.
    pub call: &'a EventFd,
}

/// A connected backend.
pub struct Session {
    tag: String,
    socket: PathBuf,
    frontend: Frontend,
    watchdog: Watchdog,
    /// The most one exchange with the backend may take.
    timeout: Duration,
    /// The virtio features the backend offered (vhost-user bits included).
    backend_features: u64,
    /// The protocol features both sides use (empty without PROTOCOL_FEATURES).
    protocol_features: VhostUserProtocolFeatures,
    /// Queues handed to the backend by the last `start`.
    started: usize,
    /// Why the session cannot be used any more.
    failed: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tag", &self.tag)
            .field("socket", &self.socket)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol_features", &self.protocol_features)
            .field("started", &self.started)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connects to the backend listening at `socket`, retrying for up to
    /// [`CONNECT_TIMEOUT`] while nothing listens there yet, and does the handshake.
    pub fn connect(tag: &str, socket: &Path) -> Result<Self, FsError> {
        Self::connect_within(tag, socket, CONNECT_TIMEOUT)
    }

    /// [`Session::connect`], waiting at most `timeout` for the backend to listen.
    pub fn connect_within(tag: &str, socket: &Path, timeout: Duration) -> Result<Self, FsError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match crate::uds::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if not_listening_yet(&e) && Instant::now() < deadline => {
                    std::thread::sleep(CONNECT_RETRY);
                }
                Err(source) => {
                    return Err(FsError::Connect {
                        tag: tag.to_owned(),
                        socket: socket.to_owned(),
                        source,
                    })
                }
            }
        };
        Self::from_stream(tag, socket, stream, BACKEND_TIMEOUT)
    }

    /// Does the handshake over an already connected stream; each exchange with the
    /// backend may take up to `timeout`.
    pub fn from_stream(
        tag: &str,
        socket: &Path,
        stream: UnixStream,
        timeout: Duration,
    ) -> Result<Self, FsError> {
        let watchdog = stream
            .try_clone()
            .and_then(Watchdog::new)
            .map_err(|source| FsError::Connect {
                tag: tag.to_owned(),
                socket: socket.to_owned(),
                source,
            })?;
        let mut session = Self {
            tag: tag.to_owned(),
            socket: socket.to_owned(),
            frontend: Frontend::from_stream(stream, NUM_QUEUES as u64),
            watchdog,
            timeout,
            backend_features: 0,
            protocol_features: VhostUserProtocolFeatures::empty(),
            started: 0,
            failed: None,
        };
        session.handshake()?;
        Ok(session)
    }

    fn handshake(&mut self) -> Result<(), FsError> {
        self.call("take ownership (SET_OWNER)", |f| f.set_owner())?;
        let features = self.call("report its features (GET_FEATURES)", |f| f.get_features())?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(self.unsuitable(format!(
                "does not offer VIRTIO_F_VERSION_1 (features {features:#x})"
            )));
        }
        self.backend_features = features;
        if features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Ok(());
        }
        let offered = self.call(
            "report its protocol features (GET_PROTOCOL_FEATURES)",
            |f| f.get_protocol_features(),
        )?;
        let used = offered & wanted_protocol_features();
        self.call("accept protocol features (SET_PROTOCOL_FEATURES)", |f| {
            f.set_protocol_features(used)
        })?;
        self.protocol_features = used;
        if used.contains(VhostUserProtocolFeatures::MQ) {
            let queues = self.call("report its queue count (GET_QUEUE_NUM)", |f| {
                f.get_queue_num()
            })?;
            if queues < NUM_QUEUES as u64 {
                return Err(
                    self.unsuitable(format!("has {queues} queues; virtio-fs needs {NUM_QUEUES}"))
                );
            }
        }
        Ok(())
    }

    /// The virtio features the backend offered, vhost-user's own bits included.
    pub fn backend_features(&self) -> u64 {
        self.backend_features
    }

    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Why the session was given up, if it was.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Hands the backend guest memory and the queues the driver set up, and starts them.
    /// `acked` are the features the driver accepted (all of them offered by the
    /// backend: the device offers no more than that).
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        vrings: &[VringSetup<'_>],
    ) -> Result<(), FsError> {
        if let Some(why) = &self.failed {
            return Err(self.unsuitable(format!("is unusable after an earlier failure: {why}")));
        }
        let uses_protocol_features = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mut features = acked & self.backend_features;
        if uses_protocol_features {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.call("accept the features (SET_FEATURES)", |f| {
            f.set_features(features)
        })?;
        // The backend acks messages only once PROTOCOL_FEATURES is set (above).
        if self
            .protocol_features
            .contains(VhostUserProtocolFeatures::REPLY_ACK)
        {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let regions = memory_regions(mem).map_err(|why| self.unsuitable(why))?;
        self.call("map guest memory (SET_MEM_TABLE)", |f| {
            f.set_mem_table(&regions)
        })?;
        for (index, vring) in vrings.iter().enumerate() {
            let config = vring_config(mem, vring.queue)
                .map_err(|why| self.unsuitable(format!("cannot get queue {index}: {why}")))?;
            // At most NUM_QUEUES vrings reach here: the index fits in the messages.
            self.started = index + 1;
            let q = vring.queue;
            self.call("size a queue (SET_VRING_NUM)", |f| {
                f.set_vring_num(index, q.size())
            })?;
            self.call("place a queue (SET_VRING_ADDR)", |f| {
                f.set_vring_addr(index, &config)
            })?;
            self.call("set a queue's base (SET_VRING_BASE)", |f| {
                f.set_vring_base(index, q.next_avail())
            })?;
            self.call("take a call eventfd (SET_VRING_CALL)", |f| {
                f.set_vring_call(index, vring.call)
            })?;
            self.call("take a kick eventfd (SET_VRING_KICK)", |f| {
                f.set_vring_kick(index, vring.kick)
            })?;
            if uses_protocol_features {
                self.call("enable a queue (SET_VRING_ENABLE)", |f| {
                    f.set_vring_enable(index, true)
                })?;
            }
        }
        Ok(())
    }

    /// Stops every queue `start` handed over (GET_VRING_BASE); returns where each
    /// stopped. After this the backend no longer touches the rings.
    pub fn stop(&mut self) -> Result<Vec<u32>, FsError> {
        let queues = std::mem::take(&mut self.started);
        if self.failed.is_some() {
            return Ok(Vec::new());
        }
        let mut bases = Vec::with_capacity(queues);
        for index in 0..queues {
            bases.push(self.call("stop a queue (GET_VRING_BASE)", |f| f.get_vring_base(index))?);
        }
        Ok(bases)
    }

    /// One exchange with the backend, bounded by the watchdog. A failure is recorded:
    /// the session is not used again.
    fn call<T>(
        &mut self,
        what: &'static str,
        exchange: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, FsError> {
        self.watchdog.arm(self.timeout);
        let r = exchange(&mut self.frontend);
        let timed_out = self.watchdog.disarm();
        let err = match r {
            // A reply that came just as the watchdog fired: the socket is gone anyway.
            _ if timed_out => FsError::Timeout {
                tag: self.tag.clone(),
                socket: self.socket.clone(),
                what,
                timeout: self.timeout,
            },
            Ok(v) => return Ok(v),
            Err(source) => FsError::Backend {
                tag: self.tag.clone(),
                socket: self.socket.clone(),
                what,
                source,
            },
        };
        self.failed = Some(err.to_string());
        Err(err)
    }

    fn unsuitable(&self, why: String) -> FsError {
        FsError::Unsuitable {
            tag: self.tag.clone(),
            socket: self.socket.clone(),
            why,
        }
    }
}

impl AsRawFd for Session {
    /// The socket, for the event loop to notice the backend going away.
    fn as_raw_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// A socket path where nothing listens yet: the file is missing, or nobody accepts.
fn not_listening_yet(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// The SET_MEM_TABLE regions: each guest RAM region's fd, offset and our address of it.
fn memory_regions(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, String> {
    mem.iter()
        .map(|region| {
            VhostUserMemoryRegionInfo::from_guest_region(region).map_err(|_| {
                format!(
                    "cannot be given guest memory at {:#x}: it is not backed by a shareable file",
                    region.start_addr().0
                )
            })
        })
        .collect()
}

/// The SET_VRING_ADDR message of `queue`: its rings as addresses in this process.
fn vring_config(mem: &GuestMemoryMmap, queue: &Queue) -> Result<VringConfigData, String> {
    let n = u64::from(queue.size());
    // Split ring sizes (virtio 1.2 §2.7), with the event-index words.
    let desc = host_address(mem, queue.desc_table(), 16 * n, "descriptor table")?;
    let avail = host_address(mem, queue.avail_ring(), 6 + 2 * n, "available ring")?;
    let used = host_address(mem, queue.used_ring(), 6 + 8 * n, "used ring")?;
    Ok(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: desc,
        used_ring_addr: used,
        avail_ring_addr: avail,
        log_addr: None,
    })
}

/// Where `[addr, addr + len)` of guest memory is mapped here, if it lies in one region.
fn host_address(mem: &GuestMemoryMmap, addr: u64, len: u64, what: &str) -> Result<u64, String> {
    let outside = || format!("the {what} at {addr:#x} (+{len:#x}) is not inside one memory region");
    let (region, offset) = mem.to_region_addr(GuestAddress(addr)).ok_or_else(outside)?;
    let end = offset.0.checked_add(len).ok_or_else(outside)?;
    if end > region.len() {
        return Err(outside());
    }
    let host = mem
        .get_host_address(GuestAddress(addr))
        .map_err(|_| outside())?;
    Ok(host as u64)
}

/// Shuts the backend socket down when an exchange takes longer than allowed: the one
/// thing that ends a read the `vhost` crate would otherwise retry forever.
struct Watchdog {
    shared: Arc<(Mutex<Watch>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Watch {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

fn lock(m: &Mutex<Watch>) -> MutexGuard<'_, Watch> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watchdog {
    fn new(socket: UnixStream) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Watch::default()), Condvar::new()));
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-fs-watchdog".into())
            .spawn(move || Self::watch(&theirs, &socket))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn watch(shared: &(Mutex<Watch>, Condvar), socket: &UnixStream) {
        let (m, cv) = shared;
        let mut w = lock(m);
        while !w.quit {
            let Some(deadline) = w.deadline else {
                w = cv.wait(w).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                w.fired = true;
                w.deadline = None;
                if let Err(e) = socket.shutdown(std::net::Shutdown::Both) {
                    log::warn!("virtio-fs: cannot shut down a stuck backend's socket: {e}");
                }
                continue;
            }
            w = cv
                .wait_timeout(w, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn arm(&self, timeout: Duration) {
        let (m, cv) = &*self.shared;
        lock(m).deadline = Some(Instant::now() + timeout);
        cv.notify_one();
    }

    /// Ends the current exchange; true if it overran (the socket is shut down).
    fn disarm(&self) -> bool {
        let mut w = lock(&self.shared.0);
        w.deadline = None;
        w.fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        lock(m).quit = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("virtio-fs: the watchdog thread panicked");
            }
        }
    }
}
