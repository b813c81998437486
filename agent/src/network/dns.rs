//! The DNS bridge: the agent answers on 127.0.0.11:53 (UDP and TCP) in the sandbox
//! network namespace, where Docker's embedded DNS server answers in a container's
//! namespace on the host, and carries each query to the host over vsock (see
//! `runm_protocol::DNS_PORT` for the wire format). In a VM 127.0.0.11 is the guest's own
//! loopback: without the bridge, names of containers on Docker user-defined networks
//! would not resolve.
//!
//! One short-lived thread per UDP query or TCP connection (two for a TCP relay), at most
//! [`MAX_IN_FLIGHT`] at a time (more are dropped, as a busy server drops them), each read
//! under a deadline, so none outlives a host or a client that stopped answering.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use runm_protocol::{DnsKind, DNS_PORT, DOCKER_DNS};
use vsock::{VsockStream, VMADDR_CID_HOST};

use crate::debug;

/// Most UDP queries and TCP connections relayed at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest DNS message: what a 2-byte length can say, and a UDP datagram's most.
pub const MAX_MESSAGE: usize = u16::MAX as usize;
/// How long a UDP query waits for the host's answer.
const UDP_DEADLINE: Duration = Duration::from_secs(5);
/// How long a TCP connection may stay silent both ways before it is closed
/// (RFC 7766 asks servers to close idle connections after a few seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long a TCP connection may last at most, however busy.
const TCP_LIFETIME: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen on {DOCKER_DNS}:53 ({0}): {1}")]
    Listen(&'static str, io::Error),
    #[error("cannot reach the host's DNS bridge: {0}")]
    Connect(io::Error),
    #[error("DNS bridge I/O: {0}")]
    Io(#[from] io::Error),
    #[error("DNS message of {0} bytes is longer than {MAX_MESSAGE}")]
    TooLong(usize),
    #[error("no complete answer from the host within {0:?}")]
    Timeout(Duration),
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

/// A byte stream to the host (vsock in the guest; TCP or a Unix socket pair in tests).
pub trait BridgeStream: Read + Write + Send + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

macro_rules! bridge_stream {
    ($t:ty) => {
        impl BridgeStream for $t {
            fn try_clone(&self) -> io::Result<Self> {
                <$t>::try_clone(self)
            }
            fn set_read_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, dur)
            }
            fn set_write_timeout(&self, dur: Option<Duration>) -> io::Result<()> {
                <$t>::set_write_timeout(self, dur)
            }
            fn shutdown(&self, how: Shutdown) -> io::Result<()> {
                <$t>::shutdown(self, how)
            }
        }
    };
}
bridge_stream!(VsockStream);
bridge_stream!(TcpStream);
bridge_stream!(UnixStream);

/// Opens one connection to the host's end of the bridge.
pub trait Host: Send + Sync + 'static {
    type Stream: BridgeStream;
    fn connect(&self) -> io::Result<Self::Stream>;
}

/// The host's end in a VM: vsock port [`DNS_PORT`] on the host (CID 2).
#[derive(Debug, Clone, Copy, Default)]
pub struct VsockHost;

impl Host for VsockHost {
    type Stream = VsockStream;
    fn connect(&self) -> io::Result<VsockStream> {
        VsockStream::connect_with_cid_port(VMADDR_CID_HOST, DNS_PORT)
    }
}

/// Binds 127.0.0.11:53 for UDP and TCP in the calling thread's network namespace
/// (whose loopback must be up).
pub fn bind() -> Result<(UdpSocket, TcpListener), DnsError> {
    let addr = SocketAddr::from((DOCKER_DNS, 53));
    let udp = UdpSocket::bind(addr).map_err(|e| DnsError::Listen("udp", e))?;
    let tcp = TcpListener::bind(addr).map_err(|e| DnsError::Listen("tcp", e))?;
    Ok((udp, tcp))
}

/// Serves both sockets on threads of their own, for ever.
pub fn start<H: Host>(udp: UdpSocket, tcp: TcpListener, host: H) -> Result<(), DnsError> {
    let host = Arc::new(host);
    let slots = Slots::new(MAX_IN_FLIGHT);
    let (h, s) = (Arc::clone(&host), slots.clone());
    thread::Builder::new()
        .name("dns-udp".into())
        .spawn(move || serve_udp(udp, h, s))
        .map_err(DnsError::Thread)?;
    thread::Builder::new()
        .name("dns-tcp".into())
        .spawn(move || serve_tcp(tcp, host, slots))
        .map_err(DnsError::Thread)?;
    Ok(())
}

/// A bounded count of relays in flight.
#[derive(Debug, Clone)]
pub struct Slots {
    used: Arc<AtomicUsize>,
    max: usize,
}

/// One relay's place; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slots {
    pub fn new(max: usize) -> Self {
        Self {
            used: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` when all are taken.
    pub fn take(&self) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.used)))
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes `message` as DNS over TCP frames it: a 2-byte big-endian length, then the
/// bytes; `prefix` (the kind byte) first if given, all in one write.
pub fn write_frame(w: &mut impl Write, prefix: Option<u8>, message: &[u8]) -> Result<(), DnsError> {
    let len = u16::try_from(message.len()).map_err(|_| DnsError::TooLong(message.len()))?;
    let mut buf = Vec::with_capacity(message.len() + 3);
    buf.extend(prefix);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(message);
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one framed message from `stream`, all of it before `deadline`.
pub fn read_frame<S: BridgeStream>(stream: &mut S, deadline: Instant) -> Result<Vec<u8>, DnsError> {
    let start = Instant::now();
    let timeout = || DnsError::Timeout(deadline.saturating_duration_since(start));
    let mut len = [0u8; 2];
    read_exact_by(stream, &mut len, deadline, timeout)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    read_exact_by(stream, &mut message, deadline, timeout)?;
    Ok(message)
}

fn read_exact_by<S: BridgeStream>(
    stream: &mut S,
    mut buf: &mut [u8],
    deadline: Instant,
    timeout: impl Fn() -> DnsError,
) -> Result<(), DnsError> {
    while !buf.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(&timeout)?;
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(timeout()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Asks the host to answer one UDP query within `limit`; returns its answer.
pub fn relay_udp<H: Host>(host: &H, query: &[u8], limit: Duration) -> Result<Vec<u8>, DnsError> {
    let deadline = Instant::now() + limit;
    let mut stream = host.connect().map_err(DnsError::Connect)?;
    stream.set_write_timeout(Some(limit))?;
    write_frame(&mut stream, Some(DnsKind::Udp as u8), query)?;
    read_frame(&mut stream, deadline)
}

/// Receives queries for ever, each answered by a thread of its own.
pub fn serve_udp<H: Host>(socket: UdpSocket, host: Arc<H>, slots: Slots) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                debug::log(|| format!("dns: udp receive: {e}"));
                // A persistent error must not spin.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(slot) = slots.take() else {
            debug::log(|| format!("dns: {MAX_IN_FLIGHT} queries in flight, dropped one"));
            continue;
        };
        let query = buf[..n].to_vec();
        let (socket, host) = (Arc::clone(&socket), Arc::clone(&host));
        let spawned = thread::Builder::new()
            .name("dns-query".into())
            .spawn(move || {
                let _slot = slot;
                match relay_udp(&*host, &query, UDP_DEADLINE) {
                    Ok(reply) => {
                        if let Err(e) = socket.send_to(&reply, from) {
                            debug::log(|| format!("dns: cannot answer {from}: {e}"));
                        }
                    }
                    Err(e) => debug::log(|| format!("dns: query from {from}: {e}")),
                }
            });
        if let Err(e) = spawned {
            debug::log(|| format!("dns: cannot start a thread: {e}"));
        }
    }
}

/// Accepts connections for ever, each relayed to the host by threads of its own.
pub fn serve_tcp<H: Host>(listener: TcpListener, host: Arc<H>, slots: Slots) {
    loop {
        let (client, from) = match listener.accept() {
            Ok(c) => c,
            Err(e) => {
                debug::log(|| format!("dns: tcp accept: {e}"));
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let Some(slot) = slots.take() else {
            debug::log(|| format!("dns: {MAX_IN_FLIGHT} relays in flight, closed {from}"));
            continue;
        };
        let host = Arc::clone(&host);
        let spawned = thread::Builder::new()
            .name("dns-tcp-conn".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = relay_tcp(&*host, client) {
                    debug::log(|| format!("dns: tcp connection from {from}: {e}"));
                }
            });
        if let Err(e) = spawned {
            debug::log(|| format!("dns: cannot start a thread: {e}"));
        }
    }
}

/// Relays one TCP connection to the host both ways until the host closes, either side
/// fails, a direction stays silent for [`TCP_IDLE`] or the connection has lasted
/// [`TCP_LIFETIME`]. A client that closes its sending
/// side (its query sent) still gets the answer: the host sees the half-close.
pub fn relay_tcp<H: Host, C: BridgeStream>(host: &H, mut client: C) -> Result<(), DnsError> {
    let mut upstream = host.connect().map_err(DnsError::Connect)?;
    idle_timeouts(&client)?;
    idle_timeouts(&upstream)?;
    upstream.write_all(&[DnsKind::Tcp as u8])?;
    let (client_in, upstream_out) = (client.try_clone()?, upstream.try_clone()?);
    let (client_end, upstream_end) = (client.try_clone()?, upstream.try_clone()?);
    let end = Instant::now() + TCP_LIFETIME;
    let to_host = thread::Builder::new()
        .name("dns-tcp-up".into())
        .spawn(move || {
            let r = copy(client_in, upstream_out, end);
            if let Ok(true) = r {
                let _ = upstream_end.shutdown(Shutdown::Write);
            } else {
                // Ends the other direction too: it wakes its read.
                let _ = client_end.shutdown(Shutdown::Both);
                let _ = upstream_end.shutdown(Shutdown::Both);
            }
            r
        })
        .map_err(DnsError::Thread)?;
    let back = copy(&mut upstream, &mut client, end);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    let up = to_host.join().unwrap_or(Ok(true));
    back.and(up).map(drop).map_err(DnsError::Io)
}

fn idle_timeouts<S: BridgeStream>(s: &S) -> io::Result<()> {
    s.set_read_timeout(Some(TCP_IDLE))?;
    s.set_write_timeout(Some(TCP_IDLE))
}

/// Copies until end of file (`true`), an error, a timeout or `end` (`false`, quietly).
fn copy<R: Read, W: Write>(mut from: R, mut to: W, end: Instant) -> io::Result<bool> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if Instant::now() >= end {
            return Ok(false);
        }
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    /// A host end on a local TCP port, which answers as the runtime would: a UDP query
    /// gets its bytes reversed, a TCP connection gets its bytes echoed.
    struct FakeHost {
        addr: SocketAddr,
        kinds: Arc<Mutex<Vec<u8>>>,
    }

    impl Host for FakeHost {
        type Stream = TcpStream;
        fn connect(&self) -> io::Result<TcpStream> {
            TcpStream::connect(self.addr)
        }
    }

    fn fake_host() -> FakeHost {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&kinds);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let seen = Arc::clone(&seen);
                thread::spawn(move || {
                    let mut kind = [0u8];
                    conn.read_exact(&mut kind).unwrap();
                    seen.lock().unwrap().push(kind[0]);
                    match DnsKind::from_byte(kind[0]) {
                        Some(DnsKind::Udp) => {
                            let deadline = Instant::now() + Duration::from_secs(5);
                            let mut query = read_frame(&mut conn, deadline).unwrap();
                            if query == b"silence" {
                                thread::sleep(Duration::from_secs(2));
                                return;
                            }
                            query.reverse();
                            write_frame(&mut conn, None, &query).unwrap();
                        }
                        Some(DnsKind::Tcp) => {
                            let mut w = conn.try_clone().unwrap();
                            let _ = io::copy(&mut conn, &mut w);
                        }
                        None => panic!("bad kind {}", kind[0]),
                    }
                });
            }
        });
        FakeHost { addr, kinds }
    }

    /// A host that refuses every connection, as one without a bridge does.
    struct NoHost;

    impl Host for NoHost {
        type Stream = UnixStream;
        fn connect(&self) -> io::Result<UnixStream> {
            Err(io::ErrorKind::ConnectionRefused.into())
        }
    }

    #[test]
    fn frames_round_trip() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        write_frame(&mut a, Some(7), b"hello").unwrap();
        let mut kind = [0u8];
        b.read_exact(&mut kind).unwrap();
        assert_eq!(kind, [7]);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(read_frame(&mut b, deadline).unwrap(), b"hello");
        write_frame(&mut a, None, b"").unwrap();
        assert_eq!(read_frame(&mut b, deadline).unwrap(), b"");
        assert!(matches!(
            write_frame(&mut a, None, &vec![0; MAX_MESSAGE + 1]),
            Err(DnsError::TooLong(_))
        ));
    }

    #[test]
    fn a_short_or_silent_answer_ends_at_its_deadline() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&[0, 10, 1, 2]).unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        assert!(matches!(
            read_frame(&mut b, deadline),
            Err(DnsError::Timeout(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(matches!(read_frame(&mut b, deadline), Err(DnsError::Io(_))));
    }

    #[test]
    fn udp_queries_are_answered_from_the_same_address() {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = server.local_addr().unwrap();
        let host = fake_host();
        let kinds = Arc::clone(&host.kinds);
        let slots = Slots::new(MAX_IN_FLIGHT);
        let s = slots.clone();
        thread::spawn(move || serve_udp(server, Arc::new(host), s));
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for query in [&b"abc"[..], &[9u8; 1500][..]] {
            client.send_to(query, server_addr).unwrap();
            let mut buf = [0u8; 2048];
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, server_addr);
            let mut want = query.to_vec();
            want.reverse();
            assert_eq!(&buf[..n], &want[..]);
        }
        assert_eq!(*kinds.lock().unwrap(), [DnsKind::Udp as u8; 2]);
        wait_for(|| slots.in_use() == 0);
    }

    #[test]
    fn a_host_that_refuses_or_is_silent_gives_no_answer() {
        assert!(matches!(
            relay_udp(&NoHost, b"q", Duration::from_secs(1)),
            Err(DnsError::Connect(_))
        ));
        let started = Instant::now();
        let err = relay_udp(&fake_host(), b"silence", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, DnsError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));

        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server_addr = server.local_addr().unwrap();
        let slots = Slots::new(MAX_IN_FLIGHT);
        let s = slots.clone();
        thread::spawn(move || serve_udp(server, Arc::new(NoHost), s));
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        client.send_to(b"q", server_addr).unwrap();
        assert!(client.recv_from(&mut [0u8; 16]).is_err());
        wait_for(|| slots.in_use() == 0);
    }

    #[test]
    fn tcp_connections_are_relayed_both_ways() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let host = fake_host();
        let kinds = Arc::clone(&host.kinds);
        let slots = Slots::new(MAX_IN_FLIGHT);
        let s = slots.clone();
        thread::spawn(move || serve_tcp(listener, Arc::new(host), s));
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        for query in [&b"first"[..], &b"second"[..]] {
            write_frame(&mut client, None, query).unwrap();
            assert_eq!(read_frame(&mut client, deadline).unwrap(), query);
        }
        // A client that closes its side once its query is sent still gets the answer.
        write_frame(&mut client, None, b"last").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_frame(&mut client, deadline).unwrap(), b"last");
        assert_eq!(client.read(&mut [0u8; 8]).unwrap(), 0, "then it is closed");
        assert_eq!(*kinds.lock().unwrap(), [DnsKind::Tcp as u8]);
        wait_for(|| slots.in_use() == 0);
    }

    #[test]
    fn relays_beyond_the_limit_are_dropped() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let full = Slots::new(0);
        thread::spawn(move || serve_tcp(listener, Arc::new(fake_host()), full));
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = write_frame(&mut client, None, b"q");
        assert!(matches!(client.read(&mut [0u8; 8]), Ok(0) | Err(_)));
    }

    fn wait_for(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out");
            thread::sleep(Duration::from_millis(10));
        }
    }
}
