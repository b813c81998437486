//! The virtio-net device without an event loop: features and configuration, offload
//! negotiation, attachment, and the rx and tx paths over mock queues and a fake tap,
//! malformed chains included.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::interrupt::{INT_CONFIG, INT_VRING};
use crate::devices::virtio::net::test_utils::*;
use crate::devices::virtio::net::{MAX_FRAME_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};

fn config_status(dev: &Net) -> u16 {
    let mut b = [0u8; 2];
    dev.read_config(6, &mut b);
    u16::from_le_bytes(b)
}

fn counter(dev: &Net, pick: fn(&NetMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    pick(&dev.metrics()).load(Ordering::Relaxed)
}

/// An activated device with a fake tap, its queues and interrupt.
macro_rules! running {
    ($mem:ident, $rxq:ident, $txq:ident, $dev:ident, $host:ident, $irq:ident, $features:expr) => {
        let $mem = guest_memory();
        let ($rxq, $txq) = queues(&$mem);
        let (tap, $host) = fake_tap();
        let mut $dev = net(Some(tap));
        let $irq = interrupt();
        $dev.activate(activation(&$mem, &$rxq, &$txq, &$irq, $features).0)
            .unwrap();
    };
}

#[test]
fn offers_modern_virtio_net_with_offloads() {
    let dev = net(None);
    assert_eq!(dev.device_type(), TYPE_NET);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    let f = dev.avail_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(f & bit, 0, "bit {bit:#x}");
    }
    // No control queue, multiqueue or MTU.
    assert_eq!(f & ((1 << 3) | (1 << 17) | (1 << 22)), 0);
}

#[test]
fn config_space_has_the_mac_and_the_link_follows_the_tap() {
    let mut dev = net(None);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
    assert_eq!(config_status(&dev), 0, "link down without a tap");
    let mut past = [0xffu8; 4];
    dev.read_config(CONFIG_LEN as u64, &mut past);
    assert_eq!(past, [0; 4]);

    let (tap, _host) = fake_tap();
    dev.attach(tap).unwrap();
    assert_eq!(config_status(&dev), VIRTIO_NET_S_LINK_UP);
    // A guest write to the MAC changes nothing.
    dev.write_config(0, &[0; 6]);
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC);
}

#[test]
fn activation_needs_both_queues() {
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let mut dev = net(None);
    let (mut a, _) = activation(&mem, &rxq, &txq, &interrupt(), 0);
    a.queues.pop();
    let err = dev.activate(a).unwrap_err();
    assert!(
        matches!(
            err,
            ActivateError::QueueCount {
                expected: 2,
                got: 1
            }
        ),
        "{err}"
    );
    assert!(!dev.is_activated());
    dev.activate(activation(&mem, &rxq, &txq, &interrupt(), 0).0)
        .unwrap();
    assert_eq!(dev.update_evt.read().unwrap(), 1);
    let again = dev.activate(activation(&mem, &rxq, &txq, &interrupt(), 0).0);
    assert!(matches!(again, Err(ActivateError::AlreadyActive)));
}

#[test]
fn the_acked_guest_offloads_are_set_on_the_tap_and_cleared_by_reset() {
    let all_guest = VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4
        | VIRTIO_NET_F_GUEST_TSO6
        | VIRTIO_NET_F_GUEST_UFO;
    for (features, flags) in [
        (0, 0),
        (VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4, 0),
        (VIRTIO_NET_F_GUEST_CSUM, TUN_F_CSUM),
        (
            VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO6,
            TUN_F_CSUM | TUN_F_TSO6,
        ),
        (all_guest, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO),
    ] {
        running!(mem, rxq, txq, dev, _host, _irq, features);
        assert_eq!(dev.offload(), flags, "features {features:#x}");
        assert!(dev.reset());
        assert_eq!(dev.offload(), 0);
    }

    // A tap attached after activation gets the offloads then.
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let mut dev = net(None);
    dev.activate(activation(&mem, &rxq, &txq, &interrupt(), all_guest).0)
        .unwrap();
    assert_eq!(dev.offload(), 0);
    dev.attach(fake_tap().0).unwrap();
    assert_eq!(
        dev.offload(),
        TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
    );
}

#[test]
fn attaching_signals_a_config_change_only_to_a_running_driver() {
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();

    // Before activation: kept, link up, no interrupt (there is no driver to tell).
    let mut dev = net(None);
    let (tap, host) = fake_tap();
    dev.attach(tap).unwrap();
    assert!(dev.link_up());
    assert_eq!(irq.status(), 0);
    dev.activate(activation(&mem, &rxq, &txq, &irq, 0).0)
        .unwrap();
    // The tap is used from activation on.
    post_rx_buffers(&rxq, 0, 1, 2048);
    host_send(&host, &vnet_frame(0, 0, 60, 5));
    assert_eq!(dev.process_rx(), 1);

    // After activation: a config-change interrupt.
    let irq = interrupt();
    let mut dev = net(None);
    dev.activate(activation(&mem, &rxq, &txq, &irq, 0).0)
        .unwrap();
    assert_eq!(config_status(&dev), 0);
    dev.attach(fake_tap().0).unwrap();
    assert_eq!(config_status(&dev), VIRTIO_NET_S_LINK_UP);
    assert_eq!(irq.status(), INT_CONFIG);
    assert_eq!(irq.irq_evt().read().unwrap(), 1);

    let err = dev.attach(fake_tap().0).unwrap_err();
    assert!(
        matches!(err, NetError::AlreadyAttached { index: 0, .. }),
        "{err}"
    );
    assert_eq!(irq.status(), INT_CONFIG, "no second interrupt");
}

#[test]
fn tx_gathers_the_chain_into_one_tap_frame() {
    running!(mem, rxq, txq, dev, host, irq, 0);
    let frame = vnet_frame(1, 0, 1500, 0xab);
    // Header split across descriptors, frame in 7-byte pieces, then the rest.
    mem.write_slice(&frame[..40], GuestAddress(TX_BUFS))
        .unwrap();
    let mut descs = Vec::new();
    for i in 0..(40 / 7 + 1) {
        let at = TX_BUFS + i * 7;
        let len = u32::try_from((40 - i * 7).min(7)).unwrap();
        descs.push(readable(at, len));
    }
    mem.write_slice(&frame[40..], GuestAddress(TX_BUFS + 0x1_0000))
        .unwrap();
    descs.push(readable(
        TX_BUFS + 0x1_0000,
        u32::try_from(frame.len() - 40).unwrap(),
    ));
    add_chain(&txq, 20, &descs);

    assert_eq!(dev.process_tx(), 1);
    assert_eq!(host_recv(&host).unwrap(), frame);
    assert_eq!(used(&txq, 0), (20, 0));
    assert_eq!(counter(&dev, |m| &m.tx_frames), 1);
    assert_eq!(counter(&dev, |m| &m.tx_bytes), 1500);
    assert_eq!(irq.status(), INT_VRING);
}

#[test]
fn tx_without_a_tap_drains_the_queue() {
    let mem = guest_memory();
    let (rxq, txq) = queues(&mem);
    let irq = interrupt();
    let mut dev = net(None);
    dev.activate(activation(&mem, &rxq, &txq, &irq, 0).0)
        .unwrap();
    for i in 0..5u16 {
        let frame = vnet_frame(0, 0, 60, 0);
        post_tx_frame(&mem, &txq, i, TX_BUFS + u64::from(i) * 0x100, &frame, 4096);
    }
    assert_eq!(dev.process_tx(), 5);
    assert_eq!(txq.used().idx().load(), 5);
    assert_eq!(counter(&dev, |m| &m.tx_dropped), 5);
    assert_eq!(irq.irq_evt().read().unwrap(), 1);
    // No rx without a tap either, and no panic.
    post_rx_buffers(&rxq, 0, 1, 2048);
    assert_eq!(dev.process_rx(), 0);
    assert_eq!(rxq.used().idx().load(), 0);
}

#[test]
fn malformed_tx_chains_are_returned_and_never_reach_the_tap() {
    running!(mem, rxq, txq, dev, host, _irq, 0);
    let frame = vnet_frame(0, 0, 60, 1);
    mem.write_slice(&frame, GuestAddress(TX_BUFS)).unwrap();
    let len = u32::try_from(frame.len()).unwrap();
    let past = MEM_SIZE - 10;
    let cases: Vec<Vec<_>> = vec![
        // A device-writable descriptor.
        vec![readable(TX_BUFS, 12), writable(TX_BUFS + 12, len - 12)],
        // Past the end of guest memory, and wrapping around the address space.
        vec![readable(past, 100)],
        vec![readable(TX_BUFS, 12), readable(u64::MAX - 4, 100)],
        // Too short for a header and an Ethernet header; nothing at all.
        vec![readable(TX_BUFS, 12 + 13)],
        vec![readable(TX_BUFS, 0)],
        // Longer than any frame.
        vec![readable(
            TX_BUFS,
            u32::try_from(MAX_BUFFER_LEN + 1).unwrap(),
        )],
        vec![readable(TX_BUFS, u32::MAX), readable(TX_BUFS, u32::MAX)],
    ];
    let mut first = 0u16;
    for descs in &cases {
        add_chain(&txq, first, descs);
        first += u16::try_from(descs.len()).unwrap();
    }
    // Zero-length descriptors are only skipped: this one goes out.
    add_chain(
        &txq,
        first,
        &[readable(TX_BUFS, 0), readable(TX_BUFS, len), readable(0, 0)],
    );

    assert_eq!(dev.process_tx(), cases.len() + 1);
    assert_eq!(host_recv(&host).unwrap(), frame);
    assert!(host_recv(&host).is_none());
    for i in 0..=cases.len() {
        assert_eq!(used(&txq, i).1, 0);
    }
    assert_eq!(counter(&dev, |m| &m.tx_dropped), cases.len() as u64);
    assert_eq!(counter(&dev, |m| &m.tx_frames), 1);
}

#[test]
fn rx_fills_one_buffer_per_frame_with_num_buffers_one() {
    running!(mem, rxq, txq, dev, host, irq, 0);
    // The header in pieces, as a driver may lay it out.
    add_chain(
        &rxq,
        0,
        &[
            writable(RX_BUFS, 4),
            writable(RX_BUFS + 0x100, 8),
            writable(RX_BUFS + 0x1000, 2000),
        ],
    );
    let mut frame = vnet_frame(2, 0, 1000, 0x5a);
    // Whatever the tap left in num_buffers, the device writes its own.
    frame[10] = 0xee;
    host_send(&host, &frame);
    assert_eq!(dev.process_rx(), 1);
    assert_eq!(used(&rxq, 0), (0, 1012));
    let mut got = guest_bytes(&mem, RX_BUFS, 4);
    got.extend(guest_bytes(&mem, RX_BUFS + 0x100, 8));
    got.extend(guest_bytes(&mem, RX_BUFS + 0x1000, 1000));
    frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(got, frame);
    assert_eq!(counter(&dev, |m| &m.rx_frames), 1);
    assert_eq!(counter(&dev, |m| &m.rx_bytes), 1000);
    assert_eq!(irq.status(), INT_VRING);
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    running!(mem, rxq, txq, dev, host, _irq, 0);
    post_rx_buffers(&rxq, 0, 1, 1526);
    host_send(&host, &vnet_frame(0, 0, 9000, 1));
    host_send(&host, &vnet_frame(0, 0, 1514, 2));
    assert_eq!(dev.process_rx(), 1);
    assert_eq!(used(&rxq, 0), (0, 1526));
    assert_eq!(guest_bytes(&mem, RX_BUFS + 26, 1), [2]);
    assert_eq!(counter(&dev, |m| &m.rx_dropped), 1);
}

#[test]
fn mrg_rxbuf_spreads_a_64k_frame_over_many_buffers() {
    running!(mem, rxq, txq, dev, host, _irq, VIRTIO_NET_F_MRG_RXBUF);
    // Linux's mergeable buffers are about a page or 1.5 KiB.
    const BUF: u32 = 4096;
    let frame = {
        let mut f = vnet_frame(1, 1, MAX_FRAME_LEN, 0);
        for (i, b) in f.iter_mut().enumerate().skip(26) {
            *b = u8::try_from(i % 251).unwrap();
        }
        f
    };
    let needed = frame.len().div_ceil(BUF as usize);
    assert_eq!(needed, 17);

    // Too few buffers: the frame waits, no buffer is consumed.
    post_rx_buffers(&rxq, 0, 10, BUF);
    host_send(&host, &frame);
    host_send(&host, &vnet_frame(0, 0, 100, 0x77));
    assert_eq!(dev.process_rx(), 0);
    assert!(dev.rx_held());
    assert_eq!(rxq.used().idx().load(), 0);

    // Enough: it goes over 17 buffers, and the small frame after it takes one more.
    post_rx_buffers(&rxq, 10, 10, BUF);
    assert_eq!(dev.process_rx(), 2);
    assert!(!dev.rx_held());
    assert_eq!(rxq.used().idx().load(), 18);
    let mut got = Vec::new();
    for i in 0..needed {
        let (id, len) = used(&rxq, i);
        assert_eq!(id as usize, i);
        let addr = RX_BUFS + (i as u64) * 0x1_0000;
        got.extend(guest_bytes(&mem, addr, len as usize));
    }
    let num_buffers = u16::from_le_bytes([got[10], got[11]]);
    assert_eq!(usize::from(num_buffers), needed);
    assert_eq!(got[..10], frame[..10]);
    assert_eq!(got[12..], frame[12..]);
    let small = RX_BUFS + 17 * 0x1_0000;
    assert_eq!(used(&rxq, 17), (17, 112));
    assert_eq!(guest_bytes(&mem, small + 10, 2), [1, 0]);
    assert_eq!(counter(&dev, |m| &m.rx_dropped), 0);
}

#[test]
fn malformed_rx_chains_cost_the_frame_but_never_hang_or_panic() {
    running!(mem, rxq, txq, dev, host, _irq, VIRTIO_NET_F_MRG_RXBUF);
    let cases: Vec<Vec<_>> = vec![
        // Device-readable.
        vec![readable(RX_BUFS, 2048)],
        // Past the end of memory; wrapping around.
        vec![writable(MEM_SIZE - 100, 2048)],
        vec![writable(u64::MAX - 10, 2048)],
        // No room for the header; nothing at all.
        vec![writable(RX_BUFS, 11)],
        vec![writable(RX_BUFS, 0), writable(RX_BUFS, 0)],
    ];
    let mut first = 0;
    for descs in &cases {
        add_chain(&rxq, first, descs);
        first += u16::try_from(descs.len()).unwrap();
        host_send(&host, &vnet_frame(0, 0, 60, 1));
    }
    assert_eq!(dev.process_rx(), 0);
    assert_eq!(rxq.used().idx().load(), u16::try_from(cases.len()).unwrap());
    for i in 0..cases.len() {
        assert_eq!(used(&rxq, i).1, 0);
    }
    assert_eq!(counter(&dev, |m| &m.rx_dropped), cases.len() as u64);

    // A good buffer after a bad one in the middle of a merged frame: both go back, the
    // frame is lost, the next one is delivered.
    add_chain(&rxq, first, &[writable(RX_BUFS, 1000)]);
    add_chain(&rxq, first + 1, &[readable(RX_BUFS + 0x1_0000, 1000)]);
    add_chain(&rxq, first + 2, &[writable(RX_BUFS + 0x2_0000, 2000)]);
    host_send(&host, &vnet_frame(0, 0, 1500, 2));
    host_send(&host, &vnet_frame(0, 0, 60, 3));
    assert_eq!(dev.process_rx(), 1);
    let n = cases.len();
    assert_eq!(used(&rxq, n), (u32::from(first), 0));
    assert_eq!(used(&rxq, n + 1), (u32::from(first + 1), 0));
    assert_eq!(used(&rxq, n + 2), (u32::from(first + 2), 72));
    // A zero-length descriptor inside a good chain is just skipped.
    add_chain(
        &rxq,
        first + 3,
        &[writable(RX_BUFS, 0), writable(RX_BUFS + 0x100, 2048)],
    );
    host_send(&host, &vnet_frame(0, 0, 60, 4));
    assert_eq!(dev.process_rx(), 1);
    assert_eq!(guest_bytes(&mem, RX_BUFS + 0x100 + 26, 1), [4]);
}

#[test]
fn a_corrupt_available_index_does_not_hang_either_queue() {
    running!(mem, rxq, txq, dev, host, irq, VIRTIO_RING_F_EVENT_IDX);
    rxq.avail().idx().store(1000);
    txq.avail().idx().store(1000);
    host_send(&host, &vnet_frame(0, 0, 60, 1));
    assert_eq!(dev.process_tx(), 0);
    assert_eq!(dev.process_rx(), 0);
    assert!(dev.rx_held());
    assert!(irq.irq_evt().read().is_err());
}

#[test]
fn event_idx_holds_back_rx_interrupts_the_driver_does_not_want() {
    running!(mem, rxq, txq, dev, host, irq, VIRTIO_RING_F_EVENT_IDX);
    // used_event (after the avail ring): interrupt once the 2nd buffer is used.
    let used_event = rxq.avail_addr().0 + 4 + 2 * u64::from(QUEUE_SIZE);
    mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    post_rx_buffers(&rxq, 0, 4, 2048);
    host_send(&host, &vnet_frame(0, 0, 60, 1));
    assert_eq!(dev.process_rx(), 1);
    assert!(irq.irq_evt().read().is_err(), "no interrupt yet");
    host_send(&host, &vnet_frame(0, 0, 60, 2));
    assert_eq!(dev.process_rx(), 1);
    assert_eq!(irq.irq_evt().read().unwrap(), 1);
}

#[test]
fn reset_drops_the_held_frame_and_keeps_the_tap() {
    running!(mem, rxq, txq, dev, host, _irq, 0);
    host_send(&host, &vnet_frame(0, 0, 60, 1));
    assert_eq!(dev.process_rx(), 0);
    assert!(dev.rx_held());
    assert!(dev.reset());
    assert!(!dev.is_activated());
    assert!(!dev.rx_held());
    assert!(dev.link_up());
    assert_eq!(counter(&dev, |m| &m.rx_dropped), 1);
    assert_eq!(dev.process_rx(), 0);
    assert_eq!(dev.process_tx(), 0);
}

/// The device over a real tap: the kernel takes the offloads the guest acked, and a
/// frame sent on the host's side of the tap reaches the guest's rx buffer.
#[test]
fn a_real_tap_takes_the_guest_offloads_and_feeds_the_rx_queue() {
    in_new_netns("a_real_tap_takes_the_guest_offloads", || {
        let mem = guest_memory();
        let (rxq, txq) = queues(&mem);
        let mut dev = net(None);
        let features = VIRTIO_NET_F_GUEST_CSUM
            | VIRTIO_NET_F_GUEST_TSO4
            | VIRTIO_NET_F_GUEST_TSO6
            | VIRTIO_NET_F_GUEST_UFO
            | VIRTIO_NET_F_MRG_RXBUF;
        dev.activate(activation(&mem, &rxq, &txq, &interrupt(), features).0)
            .unwrap();
        dev.attach(Tap::open("vmtap%d").unwrap()).unwrap();
        assert_eq!(
            dev.offload(),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UFO
        );
        set_link_up("vmtap0");
        post_rx_buffers(&rxq, 0, 32, 4096);
        let host = PacketSocket::bind(if_index("vmtap0"));
        let frame = vnet_frame(0, 0, 200, 0x42);
        host.send(&frame[VNET_HDR_LEN..]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // The kernel's own IPv6 frames may come first: look for ours.
        let found = loop {
            dev.process_rx();
            let used_idx = rxq.used().idx().load();
            let found = (0..usize::from(used_idx)).any(|i| {
                let (id, len) = used(&rxq, i);
                let got = guest_bytes(&mem, RX_BUFS + u64::from(id) * 0x1_0000, len as usize);
                got.len() == frame.len() && got[VNET_HDR_LEN..] == frame[VNET_HDR_LEN..]
            });
            if found || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(found, "the frame never reached the rx queue");

        // And back: a guest frame leaves through the tap.
        let out = vnet_frame(0, 0, 120, 0x24);
        post_tx_frame(&mem, &txq, 0, TX_BUFS, &out, 50);
        assert_eq!(dev.process_tx(), 1);
        assert_eq!(
            host.recv(std::time::Duration::from_secs(5)),
            out[VNET_HDR_LEN..]
        );
    });
}
