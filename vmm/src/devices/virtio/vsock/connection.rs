//! One stream between a guest port and a host Unix socket: its state machine (virtio 1.2
//! §5.10.6.3), its credit accounting both ways, and the guest bytes the host has not taken
//! yet.
//!
//! The host socket is non-blocking and registered edge-triggered, so `readable`/`writable`
//! remember what epoll said until a read or write hits `WouldBlock`.

use std::io::{ErrorKind, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

use super::{
    CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE,
    OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH, SHUTDOWN_RCV,
    SHUTDOWN_SEND,
};

/// A stream's address: our (host-side) port and the guest's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

impl std::fmt::Display for ConnKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host:{} <-> guest:{}", self.local_port, self.peer_port)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated: our REQUEST is out (or queued); waiting for the guest's RESPONSE.
    LocalInit,
    /// Guest-initiated: the host socket is connected; our RESPONSE is not sent yet.
    PeerInit,
    Established,
}

/// Where a stream that ended stands with the guest bytes it still held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drain {
    /// Every byte reached the host socket.
    Done,
    /// The host socket is full: wait for it to be writable.
    Blocked,
    /// The host socket failed; what was held is lost (and was logged).
    Failed,
}

/// How a connection ended, once it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// Tell the guest with a RST: an orderly end (both directions shut down) or an abort.
    Rst,
    /// The guest reset it: nothing to answer.
    Silent,
}

// Control packets a connection owes the guest; lower bits go first.
const CTRL_REQUEST: u8 = 1;
const CTRL_RESPONSE: u8 = 1 << 1;
const CTRL_SHUTDOWN: u8 = 1 << 2;
const CTRL_CREDIT_UPDATE: u8 = 1 << 3;
const CTRL_CREDIT_REQUEST: u8 = 1 << 4;

/// Stream counters are modulo 2^32 (virtio 1.2 §5.10.6.3.1); byte counts here never exceed
/// a packet, so the truncation is the wrap-around the protocol asks for.
#[allow(clippy::cast_possible_truncation)]
fn add_bytes(counter: u32, n: usize) -> u32 {
    counter.wrapping_add(n as u32)
}

/// Guest bytes accepted but not yet written to the host socket.
#[derive(Debug, Default)]
struct PendingBytes {
    data: Vec<u8>,
    start: usize,
}

impl PendingBytes {
    fn len(&self) -> usize {
        self.data.len() - self.start
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn push<B: BitmapSlice>(&mut self, src: &VolatileSlice<'_, B>) {
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        let old = self.data.len();
        self.data.resize(old + src.len(), 0);
        src.copy_to(&mut self.data[old..]);
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.data.len());
        if self.start == self.data.len() {
            // Give back what a stalled host made us hold.
            self.data = Vec::new();
            self.start = 0;
        }
    }
}

#[derive(Debug)]
pub(super) struct Connection {
    cid: u64,
    key: ConnKey,
    stream: UnixStream,
    state: State,
    /// The guest's receive buffer, and how much of what we sent it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes received from the guest, and how many of those the host socket took.
    rx_cnt: u32,
    fwd_cnt: u32,
    /// `fwd_cnt` in the last header we sent: what the guest knows of our buffer.
    last_fwd_cnt_sent: u32,
    pending: u8,
    /// Flags of the SHUTDOWN we owe the guest.
    shutdown_flags: u32,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// The host socket's read side reached EOF.
    local_eof: bool,
    /// Our SHUTDOWN(SEND) went out: no more data goes to the guest.
    eof_sent: bool,
    /// The host socket hung up (it can neither send nor receive).
    hup: bool,
    readable: bool,
    writable: bool,
    write_shut: bool,
    /// A write to the host socket failed: it takes no more bytes.
    write_failed: bool,
    credit_requested: bool,
    buf: PendingBytes,
    finish: Option<Finish>,
    deadline: Option<Instant>,
    new_deadline: bool,
    /// Bookkeeping of the muxer's queues (so a key is queued at most once).
    pub(super) in_ctrl_q: bool,
    pub(super) in_data_q: bool,
}

impl Connection {
    fn new(cid: u64, key: ConnKey, stream: UnixStream, state: State) -> Self {
        Self {
            cid,
            key,
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending: 0,
            shutdown_flags: 0,
            peer_shutdown: 0,
            local_eof: false,
            eof_sent: false,
            hup: false,
            // Edge-triggered: assume ready until the socket says otherwise (bytes may have
            // arrived before registration, e.g. right behind the CONNECT line).
            readable: true,
            writable: true,
            write_shut: false,
            write_failed: false,
            credit_requested: false,
            buf: PendingBytes::default(),
            finish: None,
            deadline: None,
            new_deadline: false,
            in_ctrl_q: false,
            in_data_q: false,
        }
    }

    /// A host client asked for guest port `key.peer_port`: REQUEST the guest, which has
    /// until `deadline` to answer.
    pub(super) fn host_initiated(
        cid: u64,
        key: ConnKey,
        stream: UnixStream,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(cid, key, stream, State::LocalInit);
        c.pending = CTRL_REQUEST;
        c.set_deadline(deadline);
        c
    }

    /// The guest's REQUEST reached a host listener: RESPONSE the guest.
    pub(super) fn guest_initiated(
        cid: u64,
        key: ConnKey,
        stream: UnixStream,
        peer_buf_alloc: u32,
        peer_fwd_cnt: u32,
    ) -> Self {
        let mut c = Self::new(cid, key, stream, State::PeerInit);
        c.peer_buf_alloc = peer_buf_alloc;
        c.peer_fwd_cnt = peer_fwd_cnt;
        c.pending = CTRL_RESPONSE;
        c
    }

    pub(super) fn key(&self) -> ConnKey {
        self.key
    }

    /// Guest bytes accepted but not yet taken by the host socket.
    pub(super) fn held(&self) -> usize {
        self.buf.len()
    }

    /// Whether the host may still be waiting for guest bytes: the stream is up, the guest
    /// has not ended its sending side, and the host socket can still take bytes.
    pub(super) fn host_awaits_guest_data(&self) -> bool {
        self.state == State::Established
            && self.peer_shutdown & SHUTDOWN_SEND == 0
            && !self.hup
            && !self.write_failed
    }

    /// Counters for log lines about how a stream ended.
    pub(super) fn summary(&self) -> String {
        format!(
            "guest sent {} bytes (SHUTDOWN flags {:#x}), host took {}, {} held; host sent {}",
            self.rx_cnt,
            self.peer_shutdown,
            self.fwd_cnt,
            self.buf.len(),
            self.tx_cnt
        )
    }

    pub(super) fn stream(&self) -> &UnixStream {
        &self.stream
    }

    pub(super) fn into_stream(self) -> UnixStream {
        self.stream
    }

    pub(super) fn finished(&self) -> Option<Finish> {
        self.finish
    }

    /// Aborts the stream; the guest gets a RST.
    pub(super) fn reset(&mut self) {
        self.finish.get_or_insert(Finish::Rst);
    }

    /// How many more bytes the guest can take (virtio 1.2 §5.10.6.3.1).
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn set_deadline(&mut self, at: Instant) {
        self.deadline = Some(at);
        self.new_deadline = true;
    }

    pub(super) fn has_deadline(&self) -> bool {
        self.deadline.is_some()
    }

    /// A deadline set since the last call, for the muxer's timer queue.
    pub(super) fn take_new_deadline(&mut self) -> Option<Instant> {
        std::mem::take(&mut self.new_deadline)
            .then_some(self.deadline)
            .flatten()
    }

    /// Resets the stream if `at` is its deadline and it has passed.
    pub(super) fn expire(&mut self, at: Instant, now: Instant) {
        if self.deadline == Some(at) && at <= now && self.finish.is_none() {
            log::info!(
                "vsock cid {}: {}: no answer from the guest in time, resetting",
                self.cid,
                self.key
            );
            self.reset();
        }
    }

    /// A packet from the guest for this stream (validated by the muxer), with its payload.
    pub(super) fn recv_pkt<B: BitmapSlice>(
        &mut self,
        pkt: &VsockPacket<'_, B>,
        data: &[VolatileSlice<'_, B>],
    ) {
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = pkt.fwd_cnt();
        match (pkt.op(), self.state) {
            (OP_RST, _) => {
                log::debug!("vsock cid {}: {}: reset by the guest", self.cid, self.key);
                self.finish.get_or_insert(Finish::Silent);
            }
            (OP_RESPONSE, State::LocalInit) => self.accepted_by_guest(),
            (op, State::LocalInit) => {
                log::warn!(
                    "vsock cid {}: {}: op {op} before the guest accepted; resetting",
                    self.cid,
                    self.key
                );
                self.reset();
            }
            (OP_RW, _) => self.recv_data(data),
            (OP_CREDIT_UPDATE, _) => {}
            (OP_CREDIT_REQUEST, _) => self.pending |= CTRL_CREDIT_UPDATE,
            (OP_SHUTDOWN, _) => self.recv_shutdown(pkt.flags()),
            (op, _) => {
                log::warn!(
                    "vsock cid {}: {}: unexpected op {op}; resetting",
                    self.cid,
                    self.key
                );
                self.reset();
            }
        }
    }

    /// The guest answered our REQUEST: tell the host client which port it got.
    fn accepted_by_guest(&mut self) {
        let line = format!("OK {}\n", self.key.local_port);
        match (&self.stream).write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.state = State::Established;
                self.deadline = None;
            }
            result => {
                log::warn!(
                    "vsock cid {}: {}: cannot confirm to the host client ({result:?}); resetting",
                    self.cid,
                    self.key
                );
                self.reset();
            }
        }
    }

    /// Guest bytes for the host: written straight to the host socket while it takes them,
    /// the rest held (in order) until it is writable again.
    fn recv_data<B: BitmapSlice>(&mut self, data: &[VolatileSlice<'_, B>]) {
        let len: usize = data.iter().map(|s| s.len()).sum();
        if len == 0 {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            log::warn!(
                "vsock cid {}: {}: data after the guest's SHUTDOWN(SEND); resetting",
                self.cid,
                self.key
            );
            self.reset();
            return;
        }
        if self.buf.len() + len > CONN_BUF_ALLOC as usize {
            log::warn!(
                "vsock cid {}: {}: guest sent past its credit ({} held, {len} more); resetting",
                self.cid,
                self.key,
                self.buf.len()
            );
            self.reset();
            return;
        }
        self.rx_cnt = add_bytes(self.rx_cnt, len);
        // Bytes of this packet written to the host socket before the current piece.
        let mut written = 0;
        for piece in data {
            let mut done = 0;
            while done < piece.len() && self.buf.is_empty() && self.writable {
                let Ok(rest) = piece.offset(done) else { break };
                match (&self.stream).write_volatile(&rest) {
                    Ok(0) => break,
                    Ok(n) => {
                        done += n;
                        self.fwd_cnt = add_bytes(self.fwd_cnt, n);
                    }
                    Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
                    Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                        self.writable = false;
                    }
                    Err(e) => {
                        // Nothing is held here (the loop only writes while nothing is).
                        self.write_failed(&e, len - written - done);
                        return;
                    }
                }
            }
            written += done;
            if done < piece.len() {
                if let Ok(rest) = piece.offset(done) {
                    self.buf.push(&rest);
                }
            }
        }
    }

    /// The host socket refused bytes: they, and those held, are lost.
    fn write_failed(&mut self, e: &dyn std::fmt::Display, unsent: usize) {
        self.write_failed = true;
        log::warn!(
            "vsock cid {}: {}: host socket write failed ({e}): {} guest bytes lost; the stream is reset",
            self.cid,
            self.key,
            unsent + self.buf.len()
        );
        self.buf.consume(self.buf.len());
        self.reset();
    }

    fn recv_shutdown(&mut self, flags: u32) {
        let new = flags & SHUTDOWN_BOTH & !self.peer_shutdown;
        self.peer_shutdown |= new;
        if new & SHUTDOWN_RCV != 0 {
            // The host's writes now fail (EPIPE) instead of filling a buffer nobody drains.
            if let Err(e) = self.stream.shutdown(Shutdown::Read) {
                log::debug!("vsock cid {}: {}: shutdown(Read): {e}", self.cid, self.key);
            }
        }
        if new & SHUTDOWN_SEND != 0 {
            self.flush();
        }
    }

    /// Writes what the host socket takes of the held guest bytes; once they are all out
    /// and the guest sends no more, the host sees EOF.
    fn flush(&mut self) {
        if self.write_held() != Drain::Done {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                log::debug!("vsock cid {}: {}: shutdown(Write): {e}", self.cid, self.key);
            }
        }
    }

    /// Writes held guest bytes until the host socket is full or they are all out.
    fn write_held(&mut self) -> Drain {
        if self.write_failed {
            return Drain::Failed;
        }
        while !self.buf.is_empty() {
            match (&self.stream).write(self.buf.bytes()) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.consume(n);
                    self.fwd_cnt = add_bytes(self.fwd_cnt, n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Drain::Blocked;
                }
                Err(e) => {
                    self.write_failed(&e, 0);
                    return Drain::Failed;
                }
            }
        }
        if self.buf.is_empty() {
            Drain::Done
        } else {
            Drain::Blocked
        }
    }

    /// The stream has ended but still holds guest bytes: the host gets them before it
    /// sees EOF, as it would had they fit in its socket before the end. Call again when
    /// epoll reports the socket (`set`) until it is no longer `Blocked`.
    pub(super) fn drain(&mut self, set: EventSet) -> Drain {
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            self.writable = true;
        }
        if !self.writable && !self.write_failed {
            return Drain::Blocked;
        }
        self.write_held()
    }

    /// What epoll reported for the host socket.
    pub(super) fn on_event(&mut self, set: EventSet) {
        let gone = EventSet::HANG_UP | EventSet::ERROR;
        if set.intersects(EventSet::IN | EventSet::READ_HANG_UP | gone) {
            self.readable = true;
        }
        if set.intersects(gone) {
            self.hup = true;
            if self.state == State::LocalInit {
                log::debug!(
                    "vsock cid {}: {}: host client left before the guest answered",
                    self.cid,
                    self.key
                );
                self.reset();
                return;
            }
            if self.local_eof && self.shutdown_flags != SHUTDOWN_BOTH {
                // EOF came first (a half-close); now the host cannot receive either.
                self.shutdown_flags = SHUTDOWN_BOTH;
                self.pending |= CTRL_SHUTDOWN;
            }
        }
        if set.intersects(EventSet::OUT | gone) {
            self.writable = true;
            self.flush();
        }
    }

    /// Whether host data should go to the guest now (and could, credit-wise).
    pub(super) fn wants_data(&self) -> bool {
        self.finish.is_none()
            && self.state == State::Established
            && self.readable
            && !self.local_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    pub(super) fn wants_ctrl(&self) -> bool {
        self.finish.is_none() && self.pending != 0
    }

    /// Reads host data into an rx buffer, no more than the guest has credit for. Returns the
    /// byte count; 0 means nothing to send now (the socket is drained, at EOF or failed).
    pub(super) fn read_into<B: BitmapSlice>(&mut self, buf: &VolatileSlice<'_, B>) -> usize {
        if !self.wants_data() {
            return 0;
        }
        let max = buf
            .len()
            .min(self.peer_credit() as usize)
            .min(MAX_PKT_DATA as usize);
        let Ok(mut dst) = buf.subslice(0, max) else {
            return 0;
        };
        if max == 0 {
            return 0;
        }
        loop {
            match (&self.stream).read_volatile(&mut dst) {
                Ok(0) => {
                    self.host_eof();
                    return 0;
                }
                Ok(n) => {
                    self.tx_cnt = add_bytes(self.tx_cnt, n);
                    return n;
                }
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::Interrupted => {}
                Err(VolatileMemoryError::IOError(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return 0;
                }
                Err(e) => {
                    log::warn!(
                        "vsock cid {}: {}: host socket read failed: {e}; resetting",
                        self.cid,
                        self.key
                    );
                    self.reset();
                    return 0;
                }
            }
        }
    }

    /// The host sends no more: tell the guest once everything before is out (it is: EOF is
    /// only seen after the last byte was read).
    fn host_eof(&mut self) {
        self.local_eof = true;
        self.readable = false;
        self.shutdown_flags = if self.hup {
            SHUTDOWN_BOTH
        } else {
            SHUTDOWN_SEND
        };
        self.pending |= CTRL_SHUTDOWN;
    }

    /// The next control packet owed to the guest: (op, flags). After a full SHUTDOWN the
    /// guest has until `shutdown_deadline` to answer with a RST.
    pub(super) fn next_ctrl(&mut self, shutdown_deadline: Instant) -> Option<(u16, u32)> {
        if self.finish.is_some() || self.pending == 0 {
            return None;
        }
        let bit = self.pending & self.pending.wrapping_neg();
        self.pending &= !bit;
        Some(match bit {
            CTRL_REQUEST => (OP_REQUEST, 0),
            CTRL_RESPONSE => {
                self.state = State::Established;
                (OP_RESPONSE, 0)
            }
            CTRL_SHUTDOWN => {
                self.eof_sent = true;
                if self.shutdown_flags == SHUTDOWN_BOTH {
                    // The guest should answer with a RST; don't wait forever.
                    self.set_deadline(shutdown_deadline);
                }
                (OP_SHUTDOWN, self.shutdown_flags)
            }
            CTRL_CREDIT_UPDATE => (OP_CREDIT_UPDATE, 0),
            _ => (OP_CREDIT_REQUEST, 0),
        })
    }

    /// Credit fields (buf_alloc, fwd_cnt) for a header about to go out. Every header carries
    /// them, so a pending CREDIT_UPDATE is answered by it.
    pub(super) fn stamp(&mut self) -> (u32, u32) {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !CTRL_CREDIT_UPDATE;
        (CONN_BUF_ALLOC, self.fwd_cnt)
    }

    /// Re-derives what follows from the current state: the orderly end, and the credit
    /// packets that keep either side from stalling.
    pub(super) fn update(&mut self) {
        if self.finish.is_some() {
            return;
        }
        let to_host_done = self.peer_shutdown & SHUTDOWN_SEND != 0 && self.buf.is_empty();
        let to_guest_done = self.peer_shutdown & SHUTDOWN_RCV != 0 || self.eof_sent;
        if to_host_done && to_guest_done {
            log::debug!("vsock cid {}: {}: closed", self.cid, self.key);
            self.finish = Some(Finish::Rst);
            return;
        }
        if self.state == State::LocalInit {
            return;
        }
        // The guest runs out of credit unless it learns what the host socket took.
        let guest_view_held = self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        if self.fwd_cnt != self.last_fwd_cnt_sent
            && CONN_BUF_ALLOC.saturating_sub(guest_view_held) < CREDIT_UPDATE_THRESHOLD
        {
            self.pending |= CTRL_CREDIT_UPDATE;
        }
        // We have data but no credit: ask once (the guest normally updates on its own).
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        } else if self.state == State::Established
            && self.readable
            && !self.local_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.credit_requested
        {
            self.credit_requested = true;
            self.pending |= CTRL_CREDIT_REQUEST;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bytes_keep_order_and_give_memory_back() {
        let mut src = *b"abcdefgh";
        let mut more = *b"ij";
        let mut p = PendingBytes::default();
        p.push(&VolatileSlice::from(&mut src[..]));
        p.consume(3);
        assert_eq!(p.bytes(), b"defgh");
        p.push(&VolatileSlice::from(&mut more[..]));
        assert_eq!(
            (p.bytes(), p.start),
            (&b"defghij"[..], 0),
            "compacted on push"
        );
        p.consume(100);
        assert!(p.is_empty());
        assert_eq!(p.data.capacity(), 0);
    }

    #[test]
    fn counters_wrap() {
        assert_eq!(add_bytes(u32::MAX - 1, 3), 1);
    }
}
