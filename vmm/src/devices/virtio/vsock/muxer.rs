//! Routes packets between the guest's queues and the host's Unix sockets.
//!
//! Guest packets (tx) are checked and handed to their connection, or open one to a host
//! listener. Host events (the listening socket, connection sockets) update connections.
//! What goes to the guest (rx) is pulled by the device one rx buffer at a time: RSTs first,
//! then control packets, then data from readable connections in turn, so no connection
//! starves the others and nothing is read from a host socket before there is an rx buffer
//! and credit for it.
//!
//! A stream that ends while still holding guest bytes for its host socket goes to
//! `drain.rs` until the host has them.
//!
//! The muxer does not touch epoll; it records which socket fds to add and which to remove
//! (keeping a closed stream open until then, so its fd number cannot be reused while still
//! registered) for the event handler to apply.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::connection::{ConnKey, Connection, Finish};
use super::drain::Drains;
use super::{
    CONNECT_TIMEOUT, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE,
    MAX_PENDING_RST, OP_REQUEST, OP_RST, OP_RW, SHUTDOWN_TIMEOUT, TYPE_STREAM,
};

/// An epoll change for the event handler to apply.
#[derive(Debug)]
pub(super) enum FdChange {
    /// Register a new host socket.
    Add(RawFd),
    /// Deregister this socket, then drop (close) it.
    Remove(UnixStream),
}

/// A host client that has not finished its `CONNECT <port>\n` line.
#[derive(Debug)]
struct HostClient {
    stream: UnixStream,
    line: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct Muxer {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    clients: HashMap<RawFd, HostClient>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Host ports of host-initiated connections.
    local_ports: HashSet<u32>,
    next_local_port: u32,
    rst_q: VecDeque<ConnKey>,
    ctrl_q: VecDeque<ConnKey>,
    data_q: VecDeque<ConnKey>,
    deadlines: BinaryHeap<Reverse<(Instant, ConnKey)>>,
    /// Ended streams still handing held guest bytes to their host.
    pub(super) drains: Drains,
    fd_changes: Vec<FdChange>,
    /// MAX_CONNECTIONS, CONNECT_TIMEOUT and SHUTDOWN_TIMEOUT, lowered by tests.
    pub(super) max_connections: usize,
    pub(super) connect_timeout: Duration,
    pub(super) shutdown_timeout: Duration,
}

/// Connects to a host listener without blocking the device thread: a Unix socket connect
/// either completes at once or fails (EAGAIN when the listener's backlog is full).
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    crate::uds::with_path(path, |p| {
        Ok(socket::connect(fd.as_raw_fd(), &UnixAddr::new(p)?)?)
    })?;
    Ok(UnixStream::from(fd))
}

/// Parses `CONNECT <port>` (the line without its newline; a CR before it is allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).ok()?;
    let port = line.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Writes a whole header; every field is set, so stale guest bytes never leak through.
#[allow(clippy::too_many_arguments)]
fn write_header<B: BitmapSlice>(
    pkt: &mut VsockPacket<'_, B>,
    cid: u64,
    key: ConnKey,
    op: u16,
    flags: u32,
    len: u32,
    (buf_alloc, fwd_cnt): (u32, u32),
) {
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(cid)
        .set_src_port(key.local_port)
        .set_dst_port(key.peer_port)
        .set_len(len)
        .set_type(TYPE_STREAM)
        .set_op(op)
        .set_flags(flags)
        .set_buf_alloc(buf_alloc)
        .set_fwd_cnt(fwd_cnt);
}

// The header size is a small constant.
#[allow(clippy::cast_possible_truncation)]
const HDR_LEN: u32 = PKT_HEADER_SIZE as u32;

impl Muxer {
    pub(super) fn new(cid: u64, uds_path: PathBuf, listener: UnixListener) -> Self {
        Self {
            cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            clients: HashMap::new(),
            by_fd: HashMap::new(),
            local_ports: HashSet::new(),
            next_local_port: FIRST_LOCAL_PORT,
            rst_q: VecDeque::new(),
            ctrl_q: VecDeque::new(),
            data_q: VecDeque::new(),
            deadlines: BinaryHeap::new(),
            drains: Drains::new(cid),
            fd_changes: Vec::new(),
            max_connections: MAX_CONNECTIONS,
            connect_timeout: CONNECT_TIMEOUT,
            shutdown_timeout: SHUTDOWN_TIMEOUT,
        }
    }

    pub(super) fn listener(&self) -> &UnixListener {
        &self.listener
    }

    fn stream_count(&self) -> usize {
        self.conns.len() + self.clients.len() + self.drains.len()
    }

    /// Epoll changes recorded since the last call.
    pub(super) fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.fd_changes)
    }

    /// Whether anything waits for an rx buffer.
    pub(super) fn has_rx_work(&self) -> bool {
        !(self.rst_q.is_empty() && self.ctrl_q.is_empty() && self.data_q.is_empty())
    }

    /// The earliest connection deadline (possibly one that no longer applies).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let conn = self.deadlines.peek().map(|Reverse((at, _))| *at);
        match (conn, self.drains.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rst_q.len() >= MAX_PENDING_RST {
            log::warn!(
                "vsock cid {}: {key}: too many RSTs waiting for rx buffers; dropped",
                self.cid
            );
            return;
        }
        self.rst_q.push_back(key);
    }

    /// Brings the queues in line with a connection's state after anything touched it, and
    /// removes it once it has finished.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.update();
        if let Some(at) = conn.take_new_deadline() {
            self.deadlines.push(Reverse((at, key)));
        }
        if let Some(finish) = conn.finished() {
            self.remove(key, finish);
            return;
        }
        if conn.wants_ctrl() && !conn.in_ctrl_q {
            conn.in_ctrl_q = true;
            self.ctrl_q.push_back(key);
        }
        if conn.wants_data() && !conn.in_data_q {
            conn.in_data_q = true;
            self.data_q.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey, finish: Finish) {
        let Some(conn) = self.conns.remove(&key) else {
            return;
        };
        if conn.in_ctrl_q {
            self.ctrl_q.retain(|k| *k != key);
        }
        if conn.in_data_q {
            self.data_q.retain(|k| *k != key);
        }
        if conn.has_deadline() {
            self.deadlines.retain(|Reverse((_, k))| *k != key);
        }
        self.by_fd.remove(&conn.stream().as_raw_fd());
        self.local_ports.remove(&key.local_port);
        if finish == Finish::Rst {
            self.queue_rst(key);
        }
        // The socket closes once the host has the guest bytes it still held.
        if let Some(stream) = self.drains.retire(conn, Instant::now()) {
            self.fd_changes.push(FdChange::Remove(stream));
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection) {
        let fd = conn.stream().as_raw_fd();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    /// A packet the guest sent (tx queue), with its payload.
    pub(super) fn send_to_host<B: BitmapSlice>(
        &mut self,
        pkt: &VsockPacket<'_, B>,
        data: &[VolatileSlice<'_, B>],
    ) {
        if pkt.src_cid() != self.cid || pkt.dst_cid() != HOST_CID {
            log::warn!(
                "vsock cid {}: dropped a packet from cid {} to cid {} (op {})",
                self.cid,
                pkt.src_cid(),
                pkt.dst_cid(),
                pkt.op()
            );
            return;
        }
        if pkt.type_() != TYPE_STREAM {
            log::warn!(
                "vsock cid {}: dropped a packet of socket type {} (only streams are offered)",
                self.cid,
                pkt.type_()
            );
            return;
        }
        let key = ConnKey {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if pkt.op() == OP_REQUEST {
                log::warn!(
                    "vsock cid {}: {key}: REQUEST on an open stream; resetting",
                    self.cid
                );
                conn.reset();
            } else {
                conn.recv_pkt(pkt, data);
            }
            self.refresh(key);
            return;
        }
        match pkt.op() {
            OP_REQUEST => self.guest_connect(key, pkt),
            OP_RST => {}
            OP_RW if !pkt.is_empty() => {
                log::warn!(
                    "vsock cid {}: {key}: {} guest bytes for no stream dropped; answering RST",
                    self.cid,
                    pkt.len()
                );
                self.queue_rst(key);
            }
            op => {
                log::debug!(
                    "vsock cid {}: {key}: op {op} for no stream; answering RST",
                    self.cid
                );
                self.queue_rst(key);
            }
        }
    }

    /// The guest connects to host port `key.local_port`: `<uds_path>_<port>`.
    fn guest_connect<B: BitmapSlice>(&mut self, key: ConnKey, pkt: &VsockPacket<'_, B>) {
        if self.stream_count() >= self.max_connections {
            log::warn!(
                "vsock cid {}: {key}: connection limit ({}) reached; refused",
                self.cid,
                self.max_connections
            );
            self.queue_rst(key);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        let path = PathBuf::from(path);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                log::debug!("vsock cid {}: {key}: connected to {path:?}", self.cid);
                self.fd_changes.push(FdChange::Add(stream.as_raw_fd()));
                let conn = Connection::guest_initiated(
                    self.cid,
                    key,
                    stream,
                    pkt.buf_alloc(),
                    pkt.fwd_cnt(),
                );
                self.insert(key, conn);
            }
            Err(e) => {
                log::info!(
                    "vsock cid {}: {key}: cannot connect to {path:?}: {e}; refused",
                    self.cid
                );
                self.queue_rst(key);
            }
        }
    }

    /// Fills one rx buffer with the next packet for the guest. Returns the length written
    /// (header included), or None when nothing is waiting (the buffer is left untouched).
    pub(super) fn fill_rx<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        now: Instant,
    ) -> Option<u32> {
        // Each turn takes one connection off the data queue; one that read nothing is not
        // put back, so this ends.
        let mut turns = self.data_q.len() + 1;
        while turns > 0 {
            turns -= 1;
            if let Some(len) = self.fill_control(pkt, now) {
                return Some(len);
            }
            // A header-only buffer cannot carry data; leave it for a control packet.
            let buf = pkt.data_slice()?;
            let key = self.data_q.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_data_q = false;
            let n = conn.read_into(buf);
            if n == 0 {
                // Drained, at EOF (a SHUTDOWN is now owed) or failed (a RST is).
                self.refresh(key);
                continue;
            }
            let credit = conn.stamp();
            let len = u32::try_from(n).unwrap_or(u32::MAX);
            write_header(pkt, self.cid, key, OP_RW, 0, len, credit);
            self.refresh(key);
            return Some(HDR_LEN.saturating_add(len));
        }
        None
    }

    /// RSTs first, then the control packets connections owe.
    fn fill_control<B: BitmapSlice>(
        &mut self,
        pkt: &mut VsockPacket<'_, B>,
        now: Instant,
    ) -> Option<u32> {
        if let Some(key) = self.rst_q.pop_front() {
            write_header(pkt, self.cid, key, OP_RST, 0, 0, (0, 0));
            return Some(HDR_LEN);
        }
        while let Some(key) = self.ctrl_q.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_ctrl_q = false;
            let Some((op, flags)) = conn.next_ctrl(now + self.shutdown_timeout) else {
                self.refresh(key);
                continue;
            };
            let credit = conn.stamp();
            write_header(pkt, self.cid, key, op, flags, 0, credit);
            self.refresh(key);
            return Some(HDR_LEN);
        }
        None
    }

    /// The listening socket is readable: accept host clients.
    pub(super) fn accept_host_clients(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.add_host_client(stream),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("vsock cid {}: accept failed: {e}", self.cid);
                    return;
                }
            }
        }
    }

    fn add_host_client(&mut self, stream: UnixStream) {
        if self.stream_count() >= self.max_connections {
            log::warn!(
                "vsock cid {}: connection limit ({}) reached; host client refused",
                self.cid,
                self.max_connections
            );
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("vsock cid {}: host client: {e}", self.cid);
            return;
        }
        let fd = stream.as_raw_fd();
        self.fd_changes.push(FdChange::Add(fd));
        self.clients.insert(
            fd,
            HostClient {
                stream,
                line: Vec::new(),
            },
        );
    }

    /// A socket the event loop could not register: close it rather than leave it deaf.
    pub(super) fn abort_fd(&mut self, fd: RawFd) {
        if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.reset();
            }
            self.refresh(key);
        } else if let Some(client) = self.clients.remove(&fd) {
            self.fd_changes.push(FdChange::Remove(client.stream));
        }
    }

    /// Epoll reported `set` for a host socket.
    pub(super) fn handle_stream_event(&mut self, fd: RawFd, set: EventSet, now: Instant) {
        if let Some(&key) = self.by_fd.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.on_event(set);
            }
            self.refresh(key);
        } else if self.drains.contains(fd) {
            if let Some(stream) = self.drains.on_event(fd, set) {
                self.fd_changes.push(FdChange::Remove(stream));
            }
        } else if self.clients.contains_key(&fd) {
            self.read_connect_line(fd, now);
        } else {
            log::debug!("vsock cid {}: event for unknown fd {fd}", self.cid);
        }
    }

    /// Reads a host client's `CONNECT <port>\n` byte by byte, so that whatever it sends
    /// after the line stays in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd, now: Instant) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let port = loop {
            let mut byte = [0u8; 1];
            match (&client.stream).read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&client.line),
                Ok(_) if client.line.len() + 1 >= MAX_CONNECT_LINE => break None,
                Ok(_) => client.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        match port {
            Some(port) => self.host_connect(client.stream, port, now),
            None => {
                log::warn!(
                    "vsock cid {}: host client sent no valid CONNECT line ({:?}); closed",
                    self.cid,
                    String::from_utf8_lossy(&client.line)
                );
                self.fd_changes.push(FdChange::Remove(client.stream));
            }
        }
    }

    /// A host port for a new host-initiated stream: counting up, skipping those in use.
    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.local_ports.contains(&port) {
                return port;
            }
        }
    }

    fn host_connect(&mut self, stream: UnixStream, peer_port: u32, now: Instant) {
        let key = ConnKey {
            local_port: self.allocate_local_port(),
            peer_port,
        };
        if self.conns.contains_key(&key) {
            // The guest opened a stream from the same pair to us; don't disturb it.
            log::warn!(
                "vsock cid {}: {key}: already in use; host client closed",
                self.cid
            );
            self.fd_changes.push(FdChange::Remove(stream));
            return;
        }
        log::debug!("vsock cid {}: {key}: host connects", self.cid);
        self.local_ports.insert(key.local_port);
        let conn = Connection::host_initiated(self.cid, key, stream, now + self.connect_timeout);
        self.insert(key, conn);
    }

    /// The timer fired: reset connections whose deadline passed, and give up on ended
    /// streams whose host did not read in time.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.expire(at, now);
                self.refresh(key);
            }
        }
        for stream in self.drains.expire(now) {
            self.fd_changes.push(FdChange::Remove(stream));
        }
    }

    /// The driver reset the device: every stream ends (the guest side of it is gone), and
    /// host clients are sent away. Guest bytes still held go to the host first, as after
    /// any end of a stream; the listener stays for the next driver.
    pub(super) fn reset(&mut self) {
        self.end_all("the driver reset the device");
    }

    fn end_all(&mut self, why: &str) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(conn) = self.conns.get(&key) {
                if conn.host_awaits_guest_data() {
                    // The host reads EOF where the guest never ended its stream: what the
                    // guest had not sent yet (if anything) is lost. Routine when a guest
                    // powers off with a stream open (the agent's), so not a warning: the
                    // host side, which knows whether it still expected data, reports that.
                    log::debug!(
                        "vsock cid {}: {key}: {why} before the guest finished sending; \
                         the host sees EOF ({})",
                        self.cid,
                        conn.summary()
                    );
                } else {
                    log::info!(
                        "vsock cid {}: {key}: still open; closed as {why} ({})",
                        self.cid,
                        conn.summary()
                    );
                }
            }
            self.remove(key, Finish::Silent);
        }
        for (_, client) in self.clients.drain() {
            self.fd_changes.push(FdChange::Remove(client.stream));
        }
        // No RST is owed to a driver that forgot every stream.
        self.rst_q.clear();
        self.ctrl_q.clear();
        self.data_q.clear();
        self.deadlines.clear();
    }

    /// Guest bytes held for host sockets, by open and by ended streams.
    #[cfg(test)]
    pub(super) fn held_bytes(&self) -> (usize, usize) {
        (
            self.conns.values().map(Connection::held).sum(),
            self.drains.held(),
        )
    }

    /// Closes every stream and client: the device is going away, and with it the event
    /// loop, so held guest bytes the host socket cannot take now are lost (and logged).
    pub(super) fn close_all(&mut self) {
        let why = "the device is going away";
        self.end_all(why);
        for stream in self.drains.abandon_all(why) {
            self.fd_changes.push(FdChange::Remove(stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 1024\r\r"), None);
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT 5 "), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(b"\xffCONNECT 5"), None);
    }
}
