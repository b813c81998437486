//! The parsers fed real kernel answers cut short and corrupted byte by byte: they may
//! drop what they cannot read, never panic.

use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::address::parse_address;
use crate::link::parse_link;
use crate::parse::scan;
use crate::route::parse_route;
use crate::socket::Conn;
use crate::tc::parse_redirects;
use crate::testns::{in_new_netns, link, run};
use crate::Rtnl;

/// Every message of a few dumps of a configured namespace, as type and payload.
fn captured() -> Vec<(u16, Vec<u8>)> {
    run("ip link add v0 type veth peer name v1");
    run("ip tuntap add t0 mode tap");
    let mut rtnl = Rtnl::new().unwrap();
    let [v0, t0] = ["v0", "t0"].map(|name| link(&mut rtnl, name).index);
    rtnl.set_up(v0, true).unwrap();
    rtnl.add_address(v0, "10.0.0.2".parse().unwrap(), 24)
        .unwrap();
    rtnl.add_address(v0, "fd00::2".parse().unwrap(), 64)
        .unwrap();
    rtnl.add_route(
        v0,
        "0.0.0.0".parse().unwrap(),
        0,
        Some("10.0.0.1".parse().unwrap()),
        Some(5),
    )
    .unwrap();
    rtnl.redirect_ingress(v0, t0).unwrap();

    let mut filters = TcMessage::with_index(i32::try_from(v0).unwrap());
    filters.header.parent = TcHandle::from(0xffff_0000);
    let mut requests = vec![
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        RouteNetlinkMessage::GetTrafficFilter(filters),
    ];
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut routes = RouteMessage::default();
        routes.header.address_family = family;
        requests.push(RouteNetlinkMessage::GetRoute(routes));
    }
    let mut conn = Conn::open(0).unwrap();
    let mut out = Vec::new();
    for request in requests {
        out.extend(
            conn.dump("capture", request, |kind, payload| {
                Some((kind, payload.to_vec()))
            })
            .unwrap(),
        );
    }
    out
}

fn parse_all(kind: u16, payload: &[u8]) {
    let _ = parse_link(kind, payload);
    for index in [1, 2, 3, 4, 5] {
        let _ = parse_address(kind, payload, index);
        let _ = parse_route(kind, payload, index);
        let _ = parse_redirects(kind, payload, index);
    }
}

#[test]
fn cut_and_corrupted_answers_do_not_panic() {
    let _ = in_new_netns("cut_and_corrupted_answers_do_not_panic", || {
        let messages = captured();
        let kinds: std::collections::HashSet<u16> = messages.iter().map(|(k, _)| *k).collect();
        // Links, addresses, routes and the filter were all seen.
        for kind in [16, 20, 24, 44] {
            assert!(kinds.contains(&kind), "no message of type {kind}");
        }

        for (kind, payload) in &messages {
            for len in 0..payload.len() {
                parse_all(*kind, &payload[..len]);
            }
            let mut corrupt = payload.clone();
            for at in 0..corrupt.len() {
                let byte = corrupt[at];
                for value in [0, 0xff, byte ^ 0x80, byte.wrapping_add(4)] {
                    corrupt[at] = value;
                    parse_all(*kind, &corrupt);
                }
                corrupt[at] = byte;
            }
        }
    });
}

#[test]
fn random_datagrams_do_not_panic() {
    // xorshift: reproducible noise without a dependency.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = usize::try_from(next() % 96).unwrap();
        let mut datagram: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        // Often a plausible length and sequence number, to get past the first checks.
        if len >= 16 && next() % 2 == 0 {
            let claimed = u32::try_from(next() % 100).unwrap();
            datagram[..4].copy_from_slice(&claimed.to_ne_bytes());
            datagram[8..12].copy_from_slice(&7u32.to_ne_bytes());
        }
        let _ = scan(&datagram, 7, &mut |kind, payload| parse_all(kind, payload));
        for kind in [16, 20, 24, 44] {
            parse_all(kind, &datagram);
        }
    }
}
