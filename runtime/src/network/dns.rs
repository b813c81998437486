//! The host end of the DNS bridge (see `runm_protocol::DNS_PORT`). Docker serves
//! container-name resolution on 127.0.0.11:53 inside the container's network
//! namespace; in a VM that address is the guest's own loopback, so the agent forwards
//! what reaches it there to this end, which asks the same address from the container's
//! namespace on the host, where this process lives. Where nothing serves 127.0.0.11
//! (podman, CNI), queries go unanswered, as they would under runc.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use runm_protocol::{DnsKind, DNS_PORT, DOCKER_DNS};

/// Queries or TCP connections in flight at once; more are dropped (a guest flooding its
/// own resolver must not cost the host a thread each).
const MAX_IN_FLIGHT: usize = 64;
/// How long a query may take, as a resolver's own timeout.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A TCP connection that carries nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(30);

/// Where the guest's connections to host port [`DNS_PORT`] arrive (hybrid vsock).
pub fn socket_path(vsock_uds: &Path) -> PathBuf {
    let mut path = vsock_uds.as_os_str().to_owned();
    path.push(format!("_{DNS_PORT}"));
    PathBuf::from(path)
}

/// Serves the bridge on a thread of its own for as long as the process lives. Call it
/// from a thread in the container's network namespace.
pub fn serve(vsock_uds: &Path) -> io::Result<()> {
    let path = socket_path(vsock_uds);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                log::debug!("DNS bridge: {MAX_IN_FLIGHT} queries in flight; dropped one");
                continue;
            }
            let in_flight = in_flight.clone();
            std::thread::spawn(move || {
                if let Err(e) = bridge(conn) {
                    log::debug!("DNS bridge: {e}");
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(())
}

fn server() -> SocketAddr {
    SocketAddr::from((DOCKER_DNS, 53))
}

fn bridge(mut guest: UnixStream) -> io::Result<()> {
    guest.set_read_timeout(Some(QUERY_TIMEOUT))?;
    guest.set_write_timeout(Some(QUERY_TIMEOUT))?;
    let mut kind = [0u8; 1];
    guest.read_exact(&mut kind)?;
    match DnsKind::from_byte(kind[0]) {
        Some(DnsKind::Udp) => udp(guest),
        Some(DnsKind::Tcp) => tcp(guest),
        None => Err(io::Error::other(format!("unknown kind {}", kind[0]))),
    }
}

/// Each framed query from the guest goes out as one datagram; its answer comes back
/// framed.
fn udp(mut guest: UnixStream) -> io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.connect(server())?;
    socket.set_read_timeout(Some(QUERY_TIMEOUT))?;
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    while let Some(len) = read_frame(&mut guest, &mut buf)? {
        socket.send(&buf[..len])?;
        let got = socket.recv(&mut buf)?;
        write_frame(&mut guest, &buf[..got])?;
    }
    Ok(())
}

/// Reads a 2-byte big-endian length and that many bytes; `None` at a clean end.
fn read_frame(from: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match from.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    from.read_exact(&mut buf[..len])?;
    Ok(Some(len))
}

fn write_frame(to: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(io::Error::other)?;
    to.write_all(&len.to_be_bytes())?;
    to.write_all(msg)
}

/// The guest's TCP connection, relayed byte for byte.
fn tcp(guest: UnixStream) -> io::Result<()> {
    let server = TcpStream::connect_timeout(&server(), QUERY_TIMEOUT)?;
    server.set_read_timeout(Some(TCP_IDLE))?;
    guest.set_read_timeout(Some(TCP_IDLE))?;
    let (mut g_in, mut s_out) = (guest.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = io::copy(&mut g_in, &mut s_out);
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let (mut s_in, mut g_out) = (server, guest);
    let _ = io::copy(&mut s_in, &mut g_out);
    let _ = g_out.shutdown(Shutdown::Both);
    let _ = s_in.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"query").unwrap();
        let mut buf = vec![0u8; 65535];
        let mut r = io::Cursor::new(wire);
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Some(5));
        assert_eq!(&buf[..5], b"query");
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), None);
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let mut buf = vec![0u8; 65535];
        let mut r = io::Cursor::new(vec![0, 9, b'a']);
        assert!(read_frame(&mut r, &mut buf).is_err());
    }

    #[test]
    fn the_socket_is_beside_the_vsock_socket() {
        assert_eq!(
            socket_path(Path::new("/run/x/vsock.sock")),
            PathBuf::from(format!("/run/x/vsock.sock_{DNS_PORT}"))
        );
    }
}
