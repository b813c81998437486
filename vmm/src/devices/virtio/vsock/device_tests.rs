use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::vsock::test_utils::{
    test_mem, Desc, Harness, Hdr, TestDir, TestGuest, GUEST_CID, HDR_LEN, MEM_SIZE, SCRATCH,
};
use crate::devices::virtio::vsock::{
    CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, FIRST_LOCAL_PORT, HOST_CID, OP_CREDIT_REQUEST,
    OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH,
    SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

const HDR: u32 = 44;

fn device(dir: &TestDir) -> Vsock {
    Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: dir.path("vsock"),
    })
    .unwrap()
}

/// Reads exactly `n` bytes from a non-blocking host socket, running the loop meanwhile.
fn host_read(h: &mut Harness, s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut out = vec![0u8; n];
    let mut got = 0;
    h.until("host bytes", |_| {
        loop {
            match s.read(&mut out[got..]) {
                Ok(0) => panic!("host socket EOF after {got} of {n} bytes"),
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("host read: {e}"),
            }
            if got == n {
                break;
            }
        }
        (got == n).then_some(())
    });
    out
}

/// Waits until the host socket reads EOF (or a reset), with nothing before it.
fn host_expect_eof(h: &mut Harness, s: &mut UnixStream) {
    s.set_nonblocking(true).unwrap();
    h.until("host EOF", |_| {
        let mut b = [0u8; 64];
        match s.read(&mut b) {
            Ok(0) => Some(()),
            Ok(n) => panic!("unexpected {n} bytes before EOF"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => None,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Some(()),
            Err(e) => panic!("host read: {e}"),
        }
    });
}

/// A host client asks for guest port `port`; returns its socket and the REQUEST.
fn host_connect(h: &mut Harness, port: u32) -> (UnixStream, Hdr) {
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let (req, data) = h.next_packet();
    assert!(data.is_empty());
    (s, req)
}

/// Host-initiated stream up to `OK <port>`: returns the host socket and the host port.
fn host_stream(h: &mut Harness, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let (mut s, req) = host_connect(h, port);
    assert_eq!(req.op, OP_REQUEST);
    let mut resp = Hdr::guest(OP_RESPONSE, port, req.src_port);
    resp.buf_alloc = buf_alloc;
    h.guest.send(resp, &[]);
    let line = format!("OK {}\n", req.src_port);
    assert_eq!(host_read(h, &mut s, line.len()), line.as_bytes());
    (s, req.src_port)
}

#[test]
fn identity_config_space_and_features() {
    let dir = TestDir::new();
    let dev = device(&dir);
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(
        dev.avail_features(),
        crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX
    );
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    let mut hi = [0xffu8; 4];
    dev.read_config(4, &mut hi);
    assert_eq!(hi, [0; 4]);
    let mut past = [0xffu8; 4];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
}

#[test]
fn new_binds_and_drop_removes_the_socket() {
    let dir = TestDir::new();
    let path = dir.path("vsock");
    let dev = device(&dir);
    assert!(path.exists());
    let err = Vsock::new(VsockConfig {
        guest_cid: 4,
        uds_path: path.clone(),
    })
    .unwrap_err();
    assert!(matches!(err, VsockError::SocketExists(_)));
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    drop(dev);
    assert!(!path.exists());

    let missing = dir.path("no/such/dir/vsock");
    let err = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: missing.clone(),
    })
    .unwrap_err();
    assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");

    for cid in [0, 1, 2, u32::MAX] {
        let err = Vsock::new(VsockConfig {
            guest_cid: cid,
            uds_path: dir.path("other"),
        })
        .unwrap_err();
        assert!(matches!(err, VsockError::InvalidCid(c) if c == cid));
    }
    assert!(!dir.path("other").exists());
}

#[test]
fn activation_needs_three_queues_once() {
    let dir = TestDir::new();
    let mut dev = device(&dir);
    let mem = test_mem();
    let guest = TestGuest::new(&mem);
    let mut a = guest.activation();
    a.queues.pop();
    assert!(matches!(
        dev.activate(a),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 2
        })
    ));
    assert!(dev.activate_evt.read().is_err(), "no activation signalled");
    dev.activate(guest.activation()).unwrap();
    assert_eq!(dev.activate_evt.read().unwrap(), 1);
    assert!(matches!(
        dev.activate(guest.activation()),
        Err(ActivateError::AlreadyActive)
    ));
}

#[test]
fn malformed_tx_chains_are_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let listener = UnixListener::bind(h.service_path(500)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let req = Hdr::guest(OP_REQUEST, 1000, 500).to_bytes();
    mem.write_slice(&req, GuestAddress(SCRATCH)).unwrap();
    let mut rw = Hdr::guest(OP_RW, 1000, 500);
    rw.len = 100;
    mem.write_slice(&rw.to_bytes(), GuestAddress(SCRATCH + 0x1000))
        .unwrap();
    let mut huge = Hdr::guest(OP_RW, 1000, 500);
    huge.len = MAX_PKT_DATA + 1;
    mem.write_slice(&huge.to_bytes(), GuestAddress(SCRATCH + 0x2000))
        .unwrap();

    let bad: Vec<Vec<Desc>> = vec![
        // Zero-length header descriptor.
        vec![Desc::at(SCRATCH, 0, false)],
        // Header split over two descriptors.
        vec![
            Desc::at(SCRATCH, 20, false),
            Desc::at(SCRATCH + 20, 24, false),
        ],
        // Header past the end of guest memory, and straddling it.
        vec![Desc::at(MEM_SIZE + 0x1000, HDR, false)],
        vec![Desc::at(MEM_SIZE - 20, HDR, false)],
        vec![Desc::at(u64::MAX - 10, HDR, false)],
        // Device-writable where the device must read.
        vec![Desc::at(SCRATCH, HDR, true)],
        // len says 100 bytes: missing data descriptor, a short one, a write-only one, and
        // one outside memory.
        vec![Desc::at(SCRATCH + 0x1000, HDR, false)],
        vec![
            Desc::at(SCRATCH + 0x1000, HDR, false),
            Desc::at(SCRATCH + 0x3000, 99, false),
        ],
        vec![
            Desc::at(SCRATCH + 0x1000, HDR, false),
            Desc::at(SCRATCH + 0x3000, 100, true),
        ],
        vec![
            Desc::at(SCRATCH + 0x1000, HDR, false),
            Desc::at(MEM_SIZE, 100, false),
        ],
        // len beyond the largest packet.
        vec![
            Desc::at(SCRATCH + 0x2000, HDR, false),
            Desc::at(SCRATCH + 0x3000, MAX_PKT_DATA + 1, false),
        ],
    ];
    let count = bad.len();
    for chain in &bad {
        h.guest.send_raw(chain);
    }
    h.pump();
    assert_eq!(
        h.guest.tx_used(),
        count,
        "every chain goes back to the driver"
    );
    h.expect_silence();
    assert!(listener.accept().is_err(), "no packet got through");

    // The device still works: a well-formed REQUEST reaches the listener.
    h.guest.send(Hdr::guest(OP_REQUEST, 1000, 500), &[]);
    let (resp, _) = h.next_packet();
    assert_eq!(resp.op, OP_RESPONSE);
    assert!(listener.accept().is_ok());
}

#[test]
fn malformed_rx_buffers_are_returned_empty() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    // Read-only, zero-length, outside memory, header-only-then-readonly data, oversized.
    h.guest.post_rx_raw(&[Desc::slot(HDR + 4096, false)]);
    h.guest.post_rx_raw(&[Desc::slot(0, true)]);
    h.guest.post_rx_raw(&[Desc::at(MEM_SIZE, HDR + 4096, true)]);
    h.guest
        .post_rx_raw(&[Desc::slot(HDR, true), Desc::slot(4096, false)]);
    h.guest
        .post_rx_raw(&[Desc::slot(HDR, true), Desc::slot(MAX_PKT_DATA + 1, true)]);
    h.guest.post_rx(1, 4096);
    // Something for the guest: a RST for a packet to no stream.
    h.guest.send(Hdr::guest(OP_RW, 1000, 77), b"x");
    h.pump();
    let got = h.guest.recv_raw();
    assert_eq!(got.len(), 6);
    assert!(got[..5]
        .iter()
        .all(|(hdr, _, used)| hdr.is_none() && *used == 0));
    let (hdr, data, used) = &got[5];
    assert_eq!(hdr.unwrap().op, OP_RST);
    assert!(data.is_empty());
    assert_eq!(*used, HDR);
}

#[test]
fn packets_with_wrong_addresses_or_type_are_dropped() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let listener = UnixListener::bind(h.service_path(600)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut wrong_src = Hdr::guest(OP_REQUEST, 1000, 600);
    wrong_src.src_cid = 4;
    let mut wrong_dst = Hdr::guest(OP_REQUEST, 1000, 600);
    wrong_dst.dst_cid = 5;
    let mut dgram = Hdr::guest(OP_REQUEST, 1000, 600);
    dgram.type_ = 3;
    let mut huge_cid = Hdr::guest(OP_REQUEST, 1000, 600);
    huge_cid.src_cid = GUEST_CID | (1 << 32);
    for hdr in [wrong_src, wrong_dst, dgram, huge_cid] {
        h.guest.send(hdr, &[]);
    }
    h.expect_silence();
    assert!(listener.accept().is_err());
    // Unknown ops and RSTs for no stream: RST for the former, nothing for the latter.
    h.guest.send(Hdr::guest(99, 1000, 600), &[]);
    h.guest.send(Hdr::guest(OP_RST, 1000, 600), &[]);
    let (rst, _) = h.next_packet();
    assert_eq!(
        (rst.op, rst.src_cid, rst.dst_cid, rst.src_port, rst.dst_port),
        (OP_RST, HOST_CID, GUEST_CID, 600, 1000)
    );
    h.expect_silence();
}

#[test]
fn guest_connect_without_listener_is_reset() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(4, 4096);
    h.guest.send(Hdr::guest(OP_REQUEST, 1234, 9999), &[]);
    let (rst, _) = h.next_packet();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port, rst.type_),
        (OP_RST, 9999, 1234, TYPE_STREAM)
    );
}

#[test]
fn host_connect_round_trip() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx_single(16, HDR + 4096);
    let (mut s, req) = host_connect(&mut h, 1024);
    assert_eq!(
        (req.op, req.src_cid, req.dst_cid, req.dst_port, req.type_),
        (OP_REQUEST, HOST_CID, GUEST_CID, 1024, TYPE_STREAM)
    );
    assert_eq!(req.src_port, FIRST_LOCAL_PORT);
    assert_eq!(req.buf_alloc, CONN_BUF_ALLOC);
    let hp = req.src_port;

    h.guest.send(Hdr::guest(OP_RESPONSE, 1024, hp), &[]);
    assert_eq!(
        host_read(&mut h, &mut s, 14),
        format!("OK {hp}\n").as_bytes()
    );

    // Host to guest.
    s.write_all(b"hello guest").unwrap();
    let (pkt, data) = h.next_packet();
    assert_eq!((pkt.op, pkt.src_port, pkt.dst_port), (OP_RW, hp, 1024));
    assert_eq!(data, b"hello guest");

    // Guest to host, both descriptor layouts.
    h.guest.send(Hdr::guest(OP_RW, 1024, hp), b"hello ");
    h.guest.send_single(Hdr::guest(OP_RW, 1024, hp), b"host");
    assert_eq!(host_read(&mut h, &mut s, 10), b"hello host");

    // The guest closes: the host reads EOF and the guest gets its RST.
    let mut shut = Hdr::guest(OP_SHUTDOWN, 1024, hp);
    shut.flags = SHUTDOWN_BOTH;
    h.guest.send(shut, &[]);
    host_expect_eof(&mut h, &mut s);
    let (rst, _) = h.next_packet();
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, hp, 1024));

    // The next host connection gets the next port.
    let (_s2, req2) = host_connect(&mut h, 1024);
    assert_eq!(req2.src_port, hp + 1);
}

#[test]
fn host_bytes_behind_the_connect_line_wait_for_the_guest() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 77\nearly bytes").unwrap();
    let (req, _) = h.next_packet();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 77));
    h.expect_silence();
    h.guest.send(Hdr::guest(OP_RESPONSE, 77, req.src_port), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(host_read(&mut h, &mut s, ok.len()), ok.as_bytes());
    let (pkt, data) = h.next_packet();
    assert_eq!((pkt.op, data.as_slice()), (OP_RW, &b"early bytes"[..]));
}

#[test]
fn bad_connect_lines_close_the_host_socket() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let lines: [&[u8]; 5] = [
        b"HELLO\n",
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        b"CONNECT 1234567890123456789012345678901234\n",
        b"CONNECT 1",
    ];
    for line in lines {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        if !line.ends_with(b"\n") {
            s.shutdown(Shutdown::Write).unwrap();
        }
        host_expect_eof(&mut h, &mut s);
    }
    h.expect_silence();
}

#[test]
fn guest_refusal_and_timeout_close_the_host_socket() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    // The guest has no listener on the port: it answers RST.
    let (mut s, req) = host_connect(&mut h, 7);
    h.guest.send(Hdr::guest(OP_RST, 7, req.src_port), &[]);
    host_expect_eof(&mut h, &mut s);
    h.expect_silence();

    // The guest never answers.
    h.dev.lock().unwrap().muxer.connect_timeout = Duration::from_millis(50);
    let (mut s, req) = host_connect(&mut h, 8);
    host_expect_eof(&mut h, &mut s);
    let (rst, _) = h.next_packet();
    assert_eq!(
        (rst.op, rst.src_port, rst.dst_port),
        (OP_RST, req.src_port, 8)
    );

    // Data before the RESPONSE is a protocol error.
    let (mut s, req) = host_connect(&mut h, 9);
    h.guest.send(Hdr::guest(OP_RW, 9, req.src_port), b"early");
    host_expect_eof(&mut h, &mut s);
    let (rst, _) = h.next_packet();
    assert_eq!(rst.op, OP_RST);
}

#[test]
fn guest_connect_round_trip_and_host_close() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    let listener = UnixListener::bind(h.service_path(52)).unwrap();
    h.guest.send(Hdr::guest(OP_REQUEST, 2000, 52), &[]);
    let (resp, _) = h.next_packet();
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port, resp.buf_alloc),
        (OP_RESPONSE, 52, 2000, CONN_BUF_ALLOC)
    );
    let (mut s, _) = listener.accept().unwrap();

    h.guest.send(Hdr::guest(OP_RW, 2000, 52), b"ping");
    assert_eq!(host_read(&mut h, &mut s, 4), b"ping");
    s.write_all(b"pong").unwrap();
    let (pkt, data) = h.next_packet();
    assert_eq!((pkt.op, data.as_slice()), (OP_RW, &b"pong"[..]));
    assert_eq!(pkt.fwd_cnt, 4, "fwd_cnt counts what the host took");

    // The host goes away: the guest gets a full SHUTDOWN, answers RST, and it is over.
    drop(s);
    let (shut, _) = h.next_packet();
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    h.guest.send(Hdr::guest(OP_RST, 2000, 52), &[]);
    h.expect_silence();
    // A packet for the closed stream is answered with RST.
    h.guest.send(Hdr::guest(OP_RW, 2000, 52), b"late");
    assert_eq!(h.next_packet().0.op, OP_RST);
}

#[test]
fn full_shutdown_without_guest_rst_times_out() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.dev.lock().unwrap().muxer.shutdown_timeout = Duration::from_millis(50);
    h.guest.post_rx(16, 4096);
    let listener = UnixListener::bind(h.service_path(53)).unwrap();
    h.guest.send(Hdr::guest(OP_REQUEST, 2001, 53), &[]);
    assert_eq!(h.next_packet().0.op, OP_RESPONSE);
    drop(listener.accept().unwrap());
    let (shut, _) = h.next_packet();
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_BOTH));
    let (rst, _) = h.next_packet();
    assert_eq!(rst.op, OP_RST);
}

#[test]
fn half_close_both_ways() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    let (mut s, hp) = host_stream(&mut h, 80, 64 * 1024);

    // The host is done sending but still reads.
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (pkt, data) = h.next_packet();
    assert_eq!((pkt.op, data.as_slice()), (OP_RW, &b"request"[..]));
    let (shut, _) = h.next_packet();
    assert_eq!((shut.op, shut.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));

    // The guest still sends, then closes its side: the host sees the bytes, then EOF.
    h.guest.send(Hdr::guest(OP_RW, 80, hp), b"reply");
    assert_eq!(host_read(&mut h, &mut s, 5), b"reply");
    let mut shut = Hdr::guest(OP_SHUTDOWN, 80, hp);
    shut.flags = SHUTDOWN_SEND;
    h.guest.send(shut, &[]);
    host_expect_eof(&mut h, &mut s);
    let (rst, _) = h.next_packet();
    assert_eq!(rst.op, OP_RST, "both directions are done");
}

#[test]
fn guest_shutdown_rcv_stops_host_to_guest_data() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    let (mut s, hp) = host_stream(&mut h, 81, 64 * 1024);
    let mut shut = Hdr::guest(OP_SHUTDOWN, 81, hp);
    shut.flags = SHUTDOWN_RCV;
    h.guest.send(shut, &[]);
    h.pump();
    assert_eq!(
        s.write(b"ignored").unwrap_err().kind(),
        ErrorKind::BrokenPipe,
        "the host learns the guest reads no more"
    );
    h.expect_silence();
    // The other direction still works.
    h.guest.send(Hdr::guest(OP_RW, 81, hp), b"still here");
    assert_eq!(host_read(&mut h, &mut s, 10), b"still here");
}

#[test]
fn host_to_guest_data_respects_guest_credit() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(64, 4096);
    let credit = 10_000u32;
    let (mut s, hp) = host_stream(&mut h, 90, credit);
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&sent).unwrap();

    let mut got = Vec::new();
    let mut fwd_cnt = 0u32;
    let mut credit_requests = 0;
    while got.len() < sent.len() {
        let (pkt, data) = h.next_packet();
        match pkt.op {
            OP_RW => {
                assert!(data.len() <= 4096);
                got.extend_from_slice(&data);
                let in_flight = u32::try_from(got.len()).unwrap() - fwd_cnt;
                assert!(
                    in_flight <= credit,
                    "{in_flight} bytes over a {credit} credit"
                );
            }
            OP_CREDIT_REQUEST => {
                credit_requests += 1;
                // The guest application read everything so far.
                fwd_cnt = u32::try_from(got.len()).unwrap();
                h.credit_update(90, hp, credit, fwd_cnt);
            }
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(got, sent);
    assert!(credit_requests >= 9, "stalls end with CREDIT_REQUEST");
}

#[test]
fn guest_to_host_credit_is_enforced_and_updated() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(64, 4096);
    let (mut s, hp) = host_stream(&mut h, 91, 64 * 1024);
    let chunk = vec![7u8; 64 * 1024];
    // The host is not reading: whatever its socket does not take is held, up to buf_alloc.
    let mut sent = 0usize;
    while sent + chunk.len() <= CONN_BUF_ALLOC as usize {
        h.guest.send(Hdr::guest(OP_RW, 91, hp), &chunk);
        sent += chunk.len();
    }
    h.pump();
    // The host now reads it all, and the device tells the guest its credit is back.
    let got = host_read(&mut h, &mut s, sent);
    assert!(got.iter().all(|&b| b == 7));
    // The guest, which used up its credit, learns that it has room again.
    let mut last_fwd_cnt = 0;
    h.until("credit updates", |h| {
        for (p, _) in h.recv() {
            assert_eq!(p.op, OP_CREDIT_UPDATE);
            last_fwd_cnt = p.fwd_cnt;
        }
        let guest_view_free = CONN_BUF_ALLOC as usize - (sent - last_fwd_cnt as usize);
        (guest_view_free >= CREDIT_UPDATE_THRESHOLD as usize).then_some(())
    });
    h.guest.tx_used();

    // Past the credit (host not reading): the stream is reset.
    let mut total = 0usize;
    loop {
        h.guest.send(Hdr::guest(OP_RW, 91, hp), &chunk);
        total += chunk.len();
        h.pump();
        h.guest.tx_used();
        let pkts = h.recv();
        if let Some((rst, _)) = pkts.iter().find(|(p, _)| p.op == OP_RST) {
            assert_eq!(rst.dst_port, 91);
            break;
        }
        assert!(total < 64 * 1024 * 1024, "never reset");
    }
    s.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => h.pump(),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(read < total, "the excess was not delivered");
}

/// A stream whose host does not read: the guest sends a whole buffer's worth
/// (`CONN_BUF_ALLOC`), more than the host socket takes, so the device holds the rest.
/// Returns the host socket, the host port and the bytes sent.
fn stream_with_held_bytes(h: &mut Harness, port: u32) -> (UnixStream, u32, Vec<u8>) {
    let (s, hp) = host_stream(h, port, 64 * 1024);
    let sent: Vec<u8> = (0..CONN_BUF_ALLOC).map(|i| (i % 253) as u8).collect();
    for chunk in sent.chunks(64 * 1024) {
        h.guest.send(Hdr::guest(OP_RW, port, hp), chunk);
    }
    h.pump();
    let (held, _) = h.dev.lock().unwrap().muxer.held_bytes();
    assert!(held > 0, "the host socket took everything; nothing is held");
    // Forget the credit updates meanwhile.
    h.guest.tx_used();
    h.recv();
    (s, hp, sent)
}

/// Reads a host socket to EOF, running the loop meanwhile.
fn host_read_to_eof(h: &mut Harness, s: &mut UnixStream) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    h.until("host EOF", |_| {
        let mut b = [0u8; 64 * 1024];
        loop {
            match s.read(&mut b) {
                Ok(0) => return Some(()),
                Ok(n) => got.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) => panic!("host read: {e}"),
            }
        }
    });
    got
}

#[test]
fn held_guest_bytes_reach_the_host_after_the_guest_resets_the_stream() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    let (mut s, hp, sent) = stream_with_held_bytes(&mut h, 96);
    // Linux's close: SHUTDOWN, then a RST when no RST came back in time.
    let mut shut = Hdr::guest(OP_SHUTDOWN, 96, hp);
    shut.flags = SHUTDOWN_BOTH;
    h.guest.send(shut, &[]);
    h.guest.send(Hdr::guest(OP_RST, 96, hp), &[]);
    h.pump();
    let (open, draining) = h.dev.lock().unwrap().muxer.held_bytes();
    assert_eq!(open, 0, "the stream ended");
    assert!(draining > 0);
    // The host reads late, and still gets every byte before EOF.
    let got = host_read_to_eof(&mut h, &mut s);
    assert_eq!(got.len(), sent.len(), "the host got a truncated stream");
    assert!(got == sent);
    assert_eq!(h.dev.lock().unwrap().muxer.held_bytes(), (0, 0));
    // The ended stream's port is free again at once.
    h.recv();
    h.guest.send(Hdr::guest(OP_RW, 96, hp), b"late");
    assert_eq!(h.next_packet().0.op, OP_RST);
}

#[test]
fn held_guest_bytes_the_host_never_reads_are_given_up_after_a_while() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.dev.lock().unwrap().muxer.drains.timeout = Duration::from_millis(50);
    h.guest.post_rx(16, 4096);
    let (mut s, hp, sent) = stream_with_held_bytes(&mut h, 97);
    h.guest.send(Hdr::guest(OP_RST, 97, hp), &[]);
    h.pump();
    std::thread::sleep(Duration::from_millis(100));
    h.until("the drain timeout", |h| {
        (h.dev.lock().unwrap().muxer.held_bytes() == (0, 0)).then_some(())
    });
    let got = host_read_to_eof(&mut h, &mut s);
    assert!(got.len() < sent.len());
    assert!(got == sent[..got.len()], "what arrived is a prefix");
}

#[test]
fn dropping_the_device_closes_open_and_ended_streams() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    let (mut open, _, sent) = stream_with_held_bytes(&mut h, 100);
    let (mut ended, hp, _) = stream_with_held_bytes(&mut h, 101);
    h.guest.send(Hdr::guest(OP_RST, 101, hp), &[]);
    h.pump();
    assert!(h.dev.lock().unwrap().muxer.held_bytes().1 > 0);
    drop(h);
    // Nothing keeps the sockets open: the hosts read what fit, then EOF.
    for s in [&mut open, &mut ended] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert!(got.len() < sent.len() && got == sent[..got.len()]);
    }
}

#[test]
fn reset_ends_every_stream_and_a_new_driver_is_served() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(16, 4096);
    // A host-initiated stream holding guest bytes, a guest-initiated one, and a host
    // client still writing its CONNECT line.
    let (mut held, _, sent) = stream_with_held_bytes(&mut h, 98);
    let listener = UnixListener::bind(h.service_path(54)).unwrap();
    h.guest.send(Hdr::guest(OP_REQUEST, 2002, 54), &[]);
    assert_eq!(h.next_packet().0.op, OP_RESPONSE);
    let (mut guest_side, _) = listener.accept().unwrap();
    let mut client = UnixStream::connect(&h.uds).unwrap();
    client.write_all(b"CONNECT 5").unwrap();
    h.pump();

    h.reset_device();
    assert!(h.dev.lock().unwrap().active.is_none());
    host_expect_eof(&mut h, &mut guest_side);
    host_expect_eof(&mut h, &mut client);
    let got = host_read_to_eof(&mut h, &mut held);
    assert!(got == sent, "held bytes reach the host before EOF");
    assert_eq!(h.guest.recv_raw().len(), 0, "no RST for a reset driver");

    // The old queues are not served, nor even watched.
    h.guest.tx_used();
    h.guest.send(Hdr::guest(OP_REQUEST, 2003, 54), &[]);
    assert_eq!(
        h.em.run_with_timeout(0).unwrap(),
        0,
        "queue eventfd still watched"
    );
    assert_eq!(h.guest.tx_used(), 0);
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err());

    // The listener stayed: a host client waits for the next driver, which serves it.
    let mut s = UnixStream::connect(&h.uds).unwrap();
    s.write_all(b"CONNECT 99\n").unwrap();
    h.pump();
    h.reactivate();
    h.guest.post_rx(16, 4096);
    let (req, _) = h.next_packet();
    assert_eq!((req.op, req.dst_port), (OP_REQUEST, 99));
    h.guest.send(Hdr::guest(OP_RESPONSE, 99, req.src_port), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(host_read(&mut h, &mut s, ok.len()), ok.as_bytes());
    h.guest.send(Hdr::guest(OP_RW, 99, req.src_port), b"again");
    assert_eq!(host_read(&mut h, &mut s, 5), b"again");
}

/// Linux 6.12 writes status 0 to every virtio device at power-off: the transport must not
/// answer with DEVICE_NEEDS_RESET, and the event loop must let go of the queues.
#[test]
fn driver_reset_through_the_transport() {
    use crate::devices::virtio::test_utils::{
        driver_ok, negotiate, read_reg as rd, setup_queue, write_reg as wr, FEATURES_OK,
    };
    use crate::devices::virtio::{status, MmioTransport, VIRTIO_F_VERSION_1};
    use std::sync::{Arc, Mutex};

    let mem = test_mem();
    let dir = TestDir::new();
    let dev = Arc::new(Mutex::new(device(&dir)));
    let mut em = event_manager::EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    event_manager::SubscriberOps::add_subscriber(&mut em, dev.clone());
    let irq = Arc::new(Interrupt::new(
        vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ));
    let as_virtio: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
    let mut t = MmioTransport::new(as_virtio, mem.clone(), irq).unwrap();
    let guest = TestGuest::new(&mem);
    assert_eq!(negotiate(&mut t, VIRTIO_F_VERSION_1), FEATURES_OK);
    for (index, queue) in (0u32..3).zip(0usize..) {
        let rings = guest.ring_addrs(queue).map(GuestAddress);
        setup_queue(&mut t, index, QUEUE_SIZE, rings);
    }
    driver_ok(&mut t);
    assert_eq!(rd(&mut t, 0x70), FEATURES_OK | status::DRIVER_OK);
    em.run_with_timeout(0).unwrap();
    assert!(dev.lock().unwrap().active.as_ref().unwrap().registered);

    wr(&mut t, 0x70, 0);
    assert_eq!(rd(&mut t, 0x70), 0, "reset, not DEVICE_NEEDS_RESET");
    assert!(dev.lock().unwrap().active.is_none());
    em.run_with_timeout(0).unwrap();
    assert!(dev.lock().unwrap().stale_notify.is_empty());
    // A notify for the old queues wakes nobody.
    wr(&mut t, 0x50, u32::try_from(TXQ_INDEX).unwrap());
    assert_eq!(em.run_with_timeout(0).unwrap(), 0);
}

#[test]
fn reset_before_the_device_thread_saw_the_activation() {
    let mem = test_mem();
    let dir = TestDir::new();
    let mut dev = device(&dir);
    assert!(dev.reset(), "an inactive device resets too");
    let guest = TestGuest::new(&mem);
    dev.activate(guest.activation()).unwrap();
    assert!(dev.reset());
    assert!(dev.stale_notify.is_empty(), "nothing was registered yet");
    dev.activate(guest.activation()).unwrap();
}

#[test]
fn credit_request_is_answered() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let (_s, hp) = host_stream(&mut h, 92, 4096);
    h.guest.send(Hdr::guest(OP_CREDIT_REQUEST, 92, hp), &[]);
    let (upd, _) = h.next_packet();
    assert_eq!(
        (upd.op, upd.buf_alloc, upd.fwd_cnt),
        (OP_CREDIT_UPDATE, CONN_BUF_ALLOC, 0)
    );
}

#[test]
fn rx_waits_for_buffers() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(1, 4096);
    let (_s, req) = host_connect(&mut h, 93);
    assert_eq!(req.op, OP_REQUEST);
    // No buffer: the next REQUEST waits in the device.
    let mut s2 = UnixStream::connect(&h.uds).unwrap();
    s2.write_all(b"CONNECT 94\n").unwrap();
    h.expect_silence();
    // Buffers without room for data carry control packets.
    h.guest.post_rx_raw(&[
        Desc::slot(u32::try_from(HDR_LEN).unwrap(), true),
        Desc::slot(0, true),
    ]);
    let (req2, _) = h.next_packet();
    assert_eq!((req2.op, req2.dst_port), (OP_REQUEST, 94));
    assert_eq!(h.guest.rx_posted(), 0);
}

#[test]
fn connection_limit() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.dev.lock().unwrap().muxer.max_connections = 2;
    h.guest.post_rx(16, 4096);
    let (_a, _) = host_connect(&mut h, 1);
    let (_b, _) = host_connect(&mut h, 2);
    let mut c = UnixStream::connect(&h.uds).unwrap();
    host_expect_eof(&mut h, &mut c);
    let _listener = UnixListener::bind(h.service_path(60)).unwrap();
    h.guest.send(Hdr::guest(OP_REQUEST, 3000, 60), &[]);
    assert_eq!(h.next_packet().0.op, OP_RST);
}

/// The guest side of one echoing stream.
#[derive(Debug, Default)]
struct Echo {
    host_port: u32,
    /// Received and not yet echoed (the guest application's unread bytes).
    held: std::collections::VecDeque<u8>,
    received: u32,
    fwd_cnt: u32,
    host_buf_alloc: u32,
    host_fwd_cnt: u32,
    sent: u32,
    host_done: bool,
    shut_sent: bool,
    closed: bool,
}

/// `streams` host clients each send `size` bytes and expect them back; the guest echoes
/// with a small receive buffer, checking the device never exceeds it.
fn echo(streams: u32, size: usize) {
    const GUEST_BUF: u32 = 16 * 1024;
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(128, 4096);
    let uds = h.uds.clone();
    let clients: Vec<_> = (0..streams)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&uds).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                s.write_all(format!("CONNECT {}\n", 5000 + i).as_bytes())
                    .unwrap();
                let mut line = [0u8; 3];
                s.read_exact(&mut line).unwrap();
                assert_eq!(&line, b"OK ");
                let mut rest = Vec::new();
                let mut b = [0u8; 1];
                while b[0] != b'\n' {
                    s.read_exact(&mut b).unwrap();
                    rest.push(b[0]);
                }
                let data: Vec<u8> = (0..size)
                    .map(|j| (j * 7 + i as usize).to_le_bytes()[0])
                    .collect();
                let mut w = s.try_clone().unwrap();
                let expect = data.clone();
                let writer = std::thread::spawn(move || {
                    w.write_all(&data).unwrap();
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut back = Vec::new();
                s.read_to_end(&mut back).unwrap();
                writer.join().unwrap();
                assert!(back == expect, "stream {i}: echo differs");
            })
        })
        .collect();

    let mut echoes: std::collections::HashMap<u32, Echo> = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while echoes.len() < streams as usize || echoes.values().any(|e| !e.closed) {
        assert!(Instant::now() < deadline, "echo test timed out");
        h.em.run_with_timeout(1).unwrap();
        h.pump();
        h.guest.tx_used();
        let pkts = h.recv();
        let n = pkts.len();
        for (pkt, data) in pkts {
            let port = pkt.dst_port;
            if pkt.op == OP_REQUEST {
                let mut resp = Hdr::guest(OP_RESPONSE, port, pkt.src_port);
                resp.buf_alloc = GUEST_BUF;
                h.guest.send(resp, &[]);
                echoes.insert(
                    port,
                    Echo {
                        host_port: pkt.src_port,
                        host_buf_alloc: pkt.buf_alloc,
                        ..Echo::default()
                    },
                );
                continue;
            }
            let e = echoes.get_mut(&port).expect("packet for an unknown stream");
            e.host_buf_alloc = pkt.buf_alloc;
            e.host_fwd_cnt = pkt.fwd_cnt;
            match pkt.op {
                OP_RW => {
                    e.received = e.received.wrapping_add(u32::try_from(data.len()).unwrap());
                    assert!(
                        e.received.wrapping_sub(e.fwd_cnt) <= GUEST_BUF,
                        "credit exceeded"
                    );
                    e.held.extend(data);
                }
                OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => {
                    let mut upd = Hdr::guest(OP_CREDIT_UPDATE, port, e.host_port);
                    upd.buf_alloc = GUEST_BUF;
                    upd.fwd_cnt = e.fwd_cnt;
                    h.guest.send(upd, &[]);
                }
                OP_SHUTDOWN => {
                    assert_eq!(pkt.flags, SHUTDOWN_SEND);
                    e.host_done = true;
                }
                OP_RST => e.closed = true,
                op => panic!("unexpected op {op}"),
            }
        }
        // Both rx buffer layouts.
        h.guest.post_rx(n / 2, 4096);
        h.guest.post_rx_single(n - n / 2, HDR + 4096);
        // Echo what the host has credit for; odd ports scatter the payload like Linux's
        // nonlinear skbs.
        for (&port, e) in echoes.iter_mut() {
            while !e.held.is_empty() && h.guest_tx_room() {
                let credit = e
                    .host_buf_alloc
                    .saturating_sub(e.sent.wrapping_sub(e.host_fwd_cnt));
                let len = e.held.len().min(8192).min(credit as usize);
                if len == 0 {
                    break;
                }
                let chunk: Vec<u8> = e.held.drain(..len).collect();
                e.fwd_cnt = e.fwd_cnt.wrapping_add(u32::try_from(len).unwrap());
                e.sent = e.sent.wrapping_add(u32::try_from(len).unwrap());
                let mut rw = Hdr::guest(OP_RW, port, e.host_port);
                rw.buf_alloc = GUEST_BUF;
                rw.fwd_cnt = e.fwd_cnt;
                if port % 2 == 1 {
                    h.guest.send_scattered(rw, &chunk, 4096);
                } else {
                    h.guest.send(rw, &chunk);
                }
            }
            if e.host_done && e.held.is_empty() && !e.shut_sent && h.guest.tx_free() > 0 {
                let mut shut = Hdr::guest(OP_SHUTDOWN, port, e.host_port);
                shut.flags = SHUTDOWN_BOTH;
                h.guest.send(shut, &[]);
                e.shut_sent = true;
            }
        }
    }
    for c in clients {
        c.join().unwrap();
    }
}

impl Harness<'_> {
    /// Whether the tx ring has room for another data packet.
    fn guest_tx_room(&mut self) -> bool {
        self.guest.tx_used();
        self.guest.tx_free() >= 4
    }
}

#[test]
fn concurrent_streams_echo_with_credit() {
    echo(8, 256 * 1024);
}

#[test]
fn many_streams_echo() {
    echo(64, 32 * 1024);
}

/// The integration suite's load, against the simulated guest:
/// `cargo test -p vmm --release -- --ignored vsock`.
#[test]
#[ignore = "slow in debug builds; run with --release"]
fn many_streams_echo_1mib() {
    echo(64, 1024 * 1024);
}

#[test]
fn event_idx_does_not_lose_notifications() {
    let mem = test_mem();
    let dir = TestDir::new();
    let dev = std::sync::Arc::new(std::sync::Mutex::new(device(&dir)));
    let mut em =
        event_manager::EventManager::<std::sync::Arc<std::sync::Mutex<Vsock>>>::new().unwrap();
    event_manager::SubscriberOps::add_subscriber(&mut em, dev.clone());
    let mut guest = TestGuest::new(&mem);
    let mut a = guest.activation();
    for q in &mut a.queues {
        virtio_queue::QueueT::set_event_idx(&mut q.queue, true);
    }
    dev.lock().unwrap().activate(a).unwrap();
    em.run_with_timeout(0).unwrap();
    for round in 0..3u32 {
        guest.post_rx(1, 4096);
        guest.send(Hdr::guest(OP_RW, 100 + round, 7), b"x");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            em.run_with_timeout(5).unwrap();
            let got = guest.recv();
            if let Some((rst, _)) = got.first() {
                assert_eq!((rst.op, rst.dst_port), (OP_RST, 100 + round));
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no RST");
        }
        assert_eq!(guest.tx_used(), 1);
        assert_eq!(
            guest.tx_avail_event(),
            u16::try_from(round + 1).unwrap(),
            "the device asks to be notified of the next tx packet"
        );
    }
}

#[test]
fn random_guest_packets_never_break_the_device() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(128, 4096);
    let listener = UnixListener::bind(h.service_path(1)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut hosts = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let small = |v: u64| u32::try_from(v).unwrap();
    for i in 0..3000 {
        let mut hdr = Hdr::guest(small(rand(9)).try_into().unwrap(), small(rand(4)), 1);
        hdr.flags = small(rand(8));
        hdr.buf_alloc = small(rand(1 << 20));
        hdr.fwd_cnt = small(rand(1 << 20));
        if rand(50) == 0 {
            hdr.type_ = 2;
        }
        let data = vec![0x5a; usize::try_from(rand(3000)).unwrap()];
        if i % 2 == 0 {
            h.guest.send(hdr, &data);
        } else {
            h.guest.send_single(hdr, &data);
        }
        if i % 16 == 0 {
            h.pump();
            h.guest.tx_used();
            let n = h.recv().len();
            h.guest.post_rx(n, 4096);
            while let Ok((s, _)) = listener.accept() {
                hosts.push(s);
            }
            for s in &mut hosts {
                s.set_nonblocking(true).unwrap();
                let _ = s.write(b"host data");
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
        }
    }
    // Still serving: a fresh stream works end to end.
    h.pump();
    h.guest.tx_used();
    h.recv();
    h.guest.post_rx(8, 4096);
    h.guest.send(Hdr::guest(OP_REQUEST, 4242, 1), &[]);
    let resp = h.until("the RESPONSE", |h| {
        h.recv().into_iter().find(|(p, _)| p.dst_port == 4242)
    });
    assert_eq!(resp.0.op, OP_RESPONSE);
}

#[test]
fn scattered_payloads_are_reassembled() {
    let mem = test_mem();
    let mut h = Harness::new(&mem);
    h.guest.post_rx(8, 4096);
    let (mut s, hp) = host_stream(&mut h, 95, 64 * 1024);
    let hdr = |len: u32| {
        let mut hdr = Hdr::guest(OP_RW, 95, hp);
        hdr.len = len;
        hdr.to_bytes()
    };
    let put = |addr: u64, bytes: &[u8]| mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    let base = SCRATCH + 0x10_0000;

    // Header alone, then the payload in three descriptors (one of them empty), as a
    // nonlinear Linux skb arrives.
    put(base, &hdr(60));
    put(base + 0x1000, &[b'a'; 10]);
    put(base + 0x2000, &[b'b'; 20]);
    put(base + 0x3000, &[b'c'; 30]);
    h.guest.send_raw(&[
        Desc::at(base, HDR, false),
        Desc::at(base + 0x1000, 10, false),
        Desc::at(base + 0x4000, 0, false),
        Desc::at(base + 0x2000, 20, false),
        Desc::at(base + 0x3000, 30, false),
    ]);
    let mut want = [b'a'; 10].to_vec();
    want.extend([b'b'; 20]);
    want.extend([b'c'; 30]);
    assert_eq!(host_read(&mut h, &mut s, 60), want);

    // Payload starting in the head descriptor and going on in the next; bytes past `len`
    // are not sent.
    put(base, &hdr(8));
    put(base + HDR as u64, b"head");
    put(base + 0x1000, b"tail+junk");
    h.guest.send_raw(&[
        Desc::at(base, HDR + 4, false),
        Desc::at(base + 0x1000, 9, false),
    ]);
    assert_eq!(host_read(&mut h, &mut s, 8), b"headtail");

    // Too few bytes, a device-writable piece, a piece outside memory: dropped.
    h.guest.tx_used();
    put(base, &hdr(100));
    for bad in [
        [
            Desc::at(base + 0x1000, 40, false),
            Desc::at(base + 0x2000, 40, false),
        ],
        [
            Desc::at(base + 0x1000, 50, false),
            Desc::at(base + 0x2000, 50, true),
        ],
        [
            Desc::at(base + 0x1000, 50, false),
            Desc::at(MEM_SIZE - 10, 50, false),
        ],
    ] {
        h.guest
            .send_raw(&[Desc::at(base, HDR, false), bad[0], bad[1]]);
    }
    h.pump();
    assert_eq!(h.guest.tx_used(), 3);
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    assert_eq!(
        s.read(&mut b).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "nothing of the bad packets reached the host"
    );
    h.expect_silence();
}
