//! One NETLINK_ROUTE socket and the request/answer exchange over it: a request goes out
//! with a fresh sequence number, and datagrams are read (each wait bounded by what is
//! left of the call's deadline) until the kernel's NLMSG_DONE or NLMSG_ERROR for that
//! number. Replies to other numbers (left over from a request that timed out) are
//! dropped, so one late answer cannot be taken for another's, and whatever is queued
//! when a request starts is read and dropped first.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::parse::{scan, Scan, ScanError};
use crate::RtnlError;

/// How long one call may wait for the kernel's whole answer, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The receive buffer. The kernel fills a dump datagram up to the reader's buffer size
/// (at most 32 KiB unless asked for more), so this holds any of them; a larger datagram
/// is reported as malformed rather than read truncated.
const RECV_BUF: usize = 64 * 1024;

/// How often a dump the kernel marks as interrupted (the tables changed while it was
/// read) is started again before its result is taken as it is.
const DUMP_RETRIES: usize = 3;

/// The most datagrams one `drain` reads.
const MAX_DRAIN: usize = 4096;

/// A bound NETLINK_ROUTE socket with its sequence numbers and deadline.
#[derive(Debug)]
pub(crate) struct Conn {
    socket: Socket,
    seq: u32,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Conn {
    /// Opens a socket in the calling thread's network namespace, subscribed to the
    /// multicast `groups` (RTMGRP_* bits; 0 for none).
    pub fn open(groups: u32) -> Result<Conn, RtnlError> {
        let socket_err = |source| RtnlError::Socket { source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_err)?;
        socket
            .bind(&SocketAddr::new(0, groups))
            .map_err(socket_err)?;
        // Best effort: the kernel's reason for a refusal, and dumps it filters itself.
        // Kernels without them still answer, just with less.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        let _ = socket.set_netlink_get_strict_chk(true);
        // Each socket gets its own answers, so its sequence numbers need only differ
        // from one of its requests to the next.
        Ok(Conn {
            socket,
            seq: 0,
            timeout: DEFAULT_TIMEOUT,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Sends `message` and waits for the kernel's ack.
    pub fn ack(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), RtnlError> {
        self.exchange(
            op,
            message,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            &mut |_, _| {},
        )
        .map(drop)
    }

    /// Sends a dump request and hands each answer's type and payload to `parse`,
    /// keeping what it returns. A dump the kernel marks interrupted is started again.
    pub fn dump<T>(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        mut parse: impl FnMut(u16, &[u8]) -> Option<T>,
    ) -> Result<Vec<T>, RtnlError> {
        let mut attempt = 0;
        loop {
            let mut out = Vec::new();
            let interrupted = self.exchange(
                op,
                message.clone(),
                NLM_F_REQUEST | NLM_F_DUMP,
                &mut |kind, payload| out.extend(parse(kind, payload)),
            )?;
            attempt += 1;
            if !interrupted || attempt > DUMP_RETRIES {
                return Ok(out);
            }
        }
    }

    /// One request and its whole answer; true if the kernel said a dump was interrupted.
    fn exchange(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
        on_message: &mut dyn FnMut(u16, &[u8]),
    ) -> Result<bool, RtnlError> {
        let io_err = |source| RtnlError::Io {
            op: op.to_owned(),
            source,
        };
        // What an earlier call left unread (it timed out, or failed mid-answer) goes
        // first: the kernel runs one dump per socket at a time, and refuses another
        // (EBUSY) until the last one is read to its end.
        self.drain().map_err(io_err)?;
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        let kernel = SocketAddr::new(0, 0);
        self.socket.send_to(&bytes, &kernel, 0).map_err(io_err)?;

        let deadline = Instant::now() + self.timeout;
        let mut interrupted = false;
        loop {
            if !self.wait_readable(deadline).map_err(io_err)? {
                return Err(RtnlError::Timeout {
                    op: op.to_owned(),
                    timeout: self.timeout,
                });
            }
            self.buf.clear();
            let (len, from) = match self
                .socket
                .recv_from(&mut self.buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                Ok(got) => got,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(io_err(e)),
            };
            if len > self.buf.len() {
                return Err(RtnlError::Malformed {
                    op: op.to_owned(),
                    detail: format!("a datagram of {len} bytes exceeds the {RECV_BUF}-byte buffer"),
                });
            }
            if from.port_number() != 0 {
                continue; // not from the kernel
            }
            match scan(&self.buf, seq, on_message) {
                Ok(Scan::More { interrupted: i }) => interrupted |= i,
                Ok(Scan::Done { interrupted: i }) => return Ok(interrupted || i),
                Err(ScanError::Kernel { errno, message }) => {
                    return Err(RtnlError::Kernel {
                        op: op.to_owned(),
                        source: io::Error::from_raw_os_error(errno),
                        message,
                    })
                }
                Err(ScanError::Malformed(detail)) => {
                    return Err(RtnlError::Malformed {
                        op: op.to_owned(),
                        detail,
                    })
                }
            }
        }
    }

    /// Reads and drops every datagram queued; true if there was any (or the kernel
    /// dropped some for want of room, ENOBUFS). Bounded, so that a flood of
    /// notifications cannot keep it reading forever.
    pub fn drain(&mut self) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..MAX_DRAIN {
            self.buf.clear();
            match self
                .socket
                .recv_from(&mut self.buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC)
            {
                Ok((_, from)) => any |= from.port_number() == 0,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Waits until a datagram is queued or `deadline` passes (false).
    pub fn wait_readable(&self, deadline: Instant) -> io::Result<bool> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Rounded up, so a wait never ends just short of the deadline and spins.
            let millis = left.as_micros().div_ceil(1000);
            let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkMessage;

    use super::*;
    use crate::testns::in_new_netns;

    fn list_links(conn: &mut Conn) -> Result<Vec<u16>, RtnlError> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        conn.dump("list interfaces", request, |kind, _| Some(kind))
    }

    #[test]
    fn a_late_answer_times_out_and_is_not_taken_for_the_next() {
        let _ = in_new_netns(
            "a_late_answer_times_out_and_is_not_taken_for_the_next",
            || {
                let mut conn = Conn::open(0).unwrap();
                conn.set_timeout(Duration::ZERO);
                let err = list_links(&mut conn).unwrap_err();
                assert!(matches!(err, RtnlError::Timeout { .. }), "{err}");
                assert_eq!(err.errno(), Some(libc::ETIMEDOUT));
                // The first answer is still queued; the next request skips it.
                conn.set_timeout(DEFAULT_TIMEOUT);
                assert_eq!(list_links(&mut conn).unwrap(), vec![16]); // lo alone
            },
        );
    }

    #[test]
    fn waiting_ends_at_the_deadline() {
        let _ = in_new_netns("waiting_ends_at_the_deadline", || {
            let conn = Conn::open(0).unwrap();
            let start = Instant::now();
            let deadline = start + Duration::from_millis(50);
            assert!(!conn.wait_readable(deadline).unwrap());
            assert!(start.elapsed() >= Duration::from_millis(50));
            assert!(start.elapsed() < Duration::from_secs(1));
        });
    }
}
