//! Streams that ended (orderly, reset by either side, or by a driver reset) while they
//! still held guest bytes their host socket had no room for. The guest sent those bytes
//! before the end, so the host gets them before it sees EOF, as it would had its socket
//! taken them in time: each such stream keeps its socket until the host has read them, or
//! [`DRAIN_TIMEOUT`] passed, when they are given up with a warning.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::connection::{Connection, Drain};
use super::DRAIN_TIMEOUT;

/// An ended stream and when it is given up.
#[derive(Debug)]
struct Draining {
    conn: Connection,
    deadline: Instant,
}

/// The ended streams still handing held guest bytes to their host, by socket. Sockets
/// come back from here when they are done, for the muxer to close.
#[derive(Debug)]
pub(super) struct Drains {
    cid: u64,
    streams: HashMap<RawFd, Draining>,
    deadlines: BinaryHeap<Reverse<(Instant, RawFd)>>,
    /// DRAIN_TIMEOUT, lowered by tests.
    pub(super) timeout: Duration,
}

impl Drains {
    pub(super) fn new(cid: u64) -> Self {
        Self {
            cid,
            streams: HashMap::new(),
            deadlines: BinaryHeap::new(),
            timeout: DRAIN_TIMEOUT,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.streams.len()
    }

    pub(super) fn contains(&self, fd: RawFd) -> bool {
        self.streams.contains_key(&fd)
    }

    /// The earliest deadline (possibly one that no longer applies).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes a stream that has ended. Returns its socket when it can be closed now (all
    /// held bytes written, or the socket failed); otherwise keeps it until it can.
    pub(super) fn retire(&mut self, mut conn: Connection, now: Instant) -> Option<UnixStream> {
        if conn.drain(EventSet::empty()) != Drain::Blocked {
            return Some(conn.into_stream());
        }
        log::debug!(
            "vsock cid {}: {}: ended; {} guest bytes wait for the host to read them",
            self.cid,
            conn.key(),
            conn.held()
        );
        let fd = conn.stream().as_raw_fd();
        let deadline = now + self.timeout;
        self.deadlines.push(Reverse((deadline, fd)));
        self.streams.insert(fd, Draining { conn, deadline });
        None
    }

    /// Epoll reported `set` for an ended stream's socket: hand the host more. Returns the
    /// socket once it can be closed.
    pub(super) fn on_event(&mut self, fd: RawFd, set: EventSet) -> Option<UnixStream> {
        let d = self.streams.get_mut(&fd)?;
        if d.conn.drain(set) == Drain::Blocked {
            return None;
        }
        self.streams.remove(&fd).map(|d| d.conn.into_stream())
    }

    /// Gives up on the streams whose host did not read in time. Returns their sockets.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<UnixStream> {
        let mut done = Vec::new();
        while let Some(&Reverse((at, fd))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            // A stale entry (its socket closed, the fd number reused) has another deadline.
            if self.streams.get(&fd).is_some_and(|d| d.deadline == at) {
                let why = format!("the host read nothing for {:?}", self.timeout);
                done.extend(self.abandon(fd, &why));
            }
        }
        done
    }

    /// Gives up on every stream (the device is going away). Returns their sockets.
    pub(super) fn abandon_all(&mut self, why: &str) -> Vec<UnixStream> {
        let fds: Vec<RawFd> = self.streams.keys().copied().collect();
        self.deadlines.clear();
        fds.into_iter()
            .filter_map(|fd| self.abandon(fd, why))
            .collect()
    }

    /// Gives up on one stream: what the host did not read is lost, and it sees EOF.
    fn abandon(&mut self, fd: RawFd, why: &str) -> Option<UnixStream> {
        let mut d = self.streams.remove(&fd)?;
        // One last try: the host may have read since the last event.
        if d.conn.drain(EventSet::OUT) == Drain::Blocked {
            log::warn!(
                "vsock cid {}: {}: {why}; {} guest bytes the host did not read are lost ({})",
                self.cid,
                d.conn.key(),
                d.conn.held(),
                d.conn.summary()
            );
        }
        Some(d.conn.into_stream())
    }

    /// Guest bytes still held.
    #[cfg(test)]
    pub(super) fn held(&self) -> usize {
        self.streams.values().map(|d| d.conn.held()).sum()
    }
}
