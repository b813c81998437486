//! Connecting two links with tc: an ingress qdisc on one and a match-all u32 filter
//! whose mirred action redirects every packet out of the other. Done both ways, this
//! joins a container's veth to a VM's tap without a bridge (Kata's "tcfilter" model).
//! u32 "match u32 0 0" is used rather than matchall because it is in every kernel that
//! has tc filters at all.

use netlink_packet_core::{
    parse_string, NlasIterator, Parseable, NLA_HEADER_SIZE, NLM_F_CREATE, NLM_F_EXCL,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMessageBuffer, TcMirror, TcMirrorActionType,
    TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Rtnl, RtnlError};

/// RTM_NEWTFILTER, the kernel's answer to a filter dump.
const RTM_NEWTFILTER: u16 = 44;
/// TC_H_INGRESS: where the ingress qdisc hangs.
const TC_H_INGRESS: u32 = 0xffff_fff1;
/// The ingress qdisc's handle, `ffff:`, which its filters name as parent.
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// ETH_P_ALL: the filter's protocol, every packet.
const ETH_P_ALL: u16 = 0x0003;
/// TCA_KIND and TCA_OPTIONS of a tc message.
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
/// TCA_ACT_KIND and TCA_ACT_OPTIONS of an action.
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
/// The option holding a classifier's actions, for the classifiers read here.
const TCA_U32_ACT: u16 = 7;
const TCA_MATCHALL_ACT: u16 = 2;
const TCA_FLOWER_ACT: u16 = 3;

impl Rtnl {
    /// Sends every packet arriving on `from` out of `to` (ingress qdisc on `from` if
    /// missing, then a u32 match-all filter with a mirred egress redirect action).
    /// Call it both ways to connect a veth and a tap. Nothing is added if `from`
    /// already redirects to `to`.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<(), RtnlError> {
        self.add_ingress_qdisc(from)?;
        if self.ingress_redirects(from)?.contains(&to) {
            return Ok(());
        }
        let mut message = tc_message(from)?;
        message.header.parent = TcHandle::from(INGRESS_HANDLE);
        // tcm_info: priority (0: the kernel picks) and protocol in network order.
        message.header.info = u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("u32".to_owned()));
        message.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(match_all())),
            TcOption::U32(TcFilterU32Option::Action(vec![redirect_to(to)])),
        ]));
        let op = format!("redirect packets arriving on interface {from} to interface {to}");
        self.conn.ack(
            &op,
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Removes the ingress qdisc of `index` (and with it every filter on it). Not an
    /// error if it has none or the link is gone.
    pub fn clear_ingress(&mut self, index: u32) -> Result<(), RtnlError> {
        let mut message = tc_message(index)?;
        message.header.parent = TcHandle::from(TC_H_INGRESS);
        message.header.handle = TcHandle::from(INGRESS_HANDLE);
        let op = format!("remove the ingress qdisc of interface {index}");
        // ENOENT: it never had one; EINVAL: it had one (its ingress queue is left
        // with a placeholder of another handle); ENODEV: the link is gone.
        match self
            .conn
            .ack(&op, RouteNetlinkMessage::DelQueueDiscipline(message), 0)
        {
            Err(e @ RtnlError::Kernel { .. })
                if matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The interfaces the ingress filters of `index` redirect to (for tests and
    /// checks). Empty when it has no ingress qdisc.
    pub fn ingress_redirects(&mut self, index: u32) -> Result<Vec<u32>, RtnlError> {
        let mut message = tc_message(index)?;
        message.header.parent = TcHandle::from(INGRESS_HANDLE);
        let op = format!("list the ingress filters of interface {index}");
        let lists = match self.conn.dump(
            &op,
            RouteNetlinkMessage::GetTrafficFilter(message),
            |kind, payload| parse_redirects(kind, payload, index),
        ) {
            // No ingress qdisc to list filters of.
            Err(e @ RtnlError::Kernel { .. })
                if matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                return Ok(Vec::new())
            }
            other => other?,
        };
        Ok(lists.into_iter().flatten().collect())
    }

    fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), RtnlError> {
        let mut message = tc_message(index)?;
        message.header.parent = TcHandle::from(TC_H_INGRESS);
        message.header.handle = TcHandle::from(INGRESS_HANDLE);
        message
            .attributes
            .push(TcAttribute::Kind("ingress".to_owned()));
        let op = format!("add an ingress qdisc to interface {index}");
        match self.conn.ack(
            &op,
            RouteNetlinkMessage::NewQueueDiscipline(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }
}

fn tc_message(index: u32) -> Result<TcMessage, RtnlError> {
    let index = i32::try_from(index).map_err(|_| RtnlError::InvalidArgument {
        op: format!("set up tc on interface {index}"),
        detail: "no such interface index".into(),
    })?;
    Ok(TcMessage::with_index(index))
}

/// A u32 selector matching every packet ("match u32 0 0 at 0"), ending classification.
fn match_all() -> TcU32Selector {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    selector
}

/// `action mirred egress redirect dev <to>`.
fn redirect_to(to: u32) -> TcAction {
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".to_owned()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    action
}

/// The redirect targets of one ingress filter of `index` from an RTM_NEWTFILTER
/// payload. Read by hand down to the mirred parameters, so that statistics or options
/// this crate cannot parse do not hide them.
pub(crate) fn parse_redirects(kind: u16, payload: &[u8], index: u32) -> Option<Vec<u32>> {
    if kind != RTM_NEWTFILTER {
        return None;
    }
    let buf = TcMessageBuffer::new_checked(payload).ok()?;
    if i64::from(buf.index()) != i64::from(index) || buf.parent() != INGRESS_HANDLE {
        return None;
    }
    let (mut classifier, mut options) = (None, None);
    for (kind, value) in nested(buf.payload()) {
        match kind {
            TCA_KIND => classifier = parse_string(value).ok(),
            TCA_OPTIONS => options = Some(value),
            _ => {}
        }
    }
    let actions_kind = match classifier?.as_str() {
        "u32" => TCA_U32_ACT,
        "matchall" => TCA_MATCHALL_ACT,
        "flower" => TCA_FLOWER_ACT,
        _ => return None,
    };
    let mut targets = Vec::new();
    for (kind, actions) in nested(options?) {
        if kind == actions_kind {
            targets.extend(nested(actions).filter_map(|(_, action)| mirred_redirect(action)));
        }
    }
    Some(targets)
}

/// The interface a mirred redirect action sends to, given the action's attributes.
fn mirred_redirect(action: &[u8]) -> Option<u32> {
    let (mut kind, mut options) = (None, None);
    for (nla_kind, value) in nested(action) {
        match nla_kind {
            TCA_ACT_KIND => kind = parse_string(value).ok(),
            TCA_ACT_OPTIONS => options = Some(value),
            _ => {}
        }
    }
    if kind? != "mirred" {
        return None;
    }
    NlasIterator::new(options?)
        .map_while(Result::ok)
        .find_map(|nla| match TcActionMirrorOption::parse(&nla) {
            Ok(TcActionMirrorOption::Parms(parms)) => matches!(
                parms.eaction,
                TcMirrorActionType::EgressRedir | TcMirrorActionType::IngressRedir
            )
            .then_some(parms.ifindex),
            _ => None,
        })
}

/// The attributes nested in `bytes`, as type and value, up to the first malformed one.
fn nested(bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(bytes).map_while(Result::ok).map(|nla| {
        let (kind, len) = (nla.kind(), usize::from(nla.length()));
        let value = nla
            .into_inner()
            .get(NLA_HEADER_SIZE..len)
            .unwrap_or_default();
        (kind, value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::{in_new_netns, link, run};

    #[test]
    fn veth_and_tap_are_connected_both_ways_and_cleared() {
        let _ = in_new_netns("veth_and_tap_are_connected_both_ways_and_cleared", || {
            run("ip link add v0 type veth peer name v1");
            run("ip tuntap add t0 mode tap");
            let mut rtnl = Rtnl::new().unwrap();
            let v0 = link(&mut rtnl, "v0").index;
            let t0 = link(&mut rtnl, "t0").index;
            assert!(rtnl.ingress_redirects(v0).unwrap().is_empty());

            rtnl.redirect_ingress(v0, t0).unwrap();
            rtnl.redirect_ingress(t0, v0).unwrap();
            assert_eq!(rtnl.ingress_redirects(v0).unwrap(), vec![t0]);
            assert_eq!(rtnl.ingress_redirects(t0).unwrap(), vec![v0]);
            // What tc itself reads back.
            let shown = run("tc filter show dev v0 ingress");
            assert!(shown.contains("u32"), "{shown}");
            assert!(shown.contains("Redirect to device t0"), "{shown}");
            // Asking again adds nothing.
            rtnl.redirect_ingress(v0, t0).unwrap();
            assert_eq!(rtnl.ingress_redirects(v0).unwrap(), vec![t0]);

            rtnl.clear_ingress(v0).unwrap();
            assert!(rtnl.ingress_redirects(v0).unwrap().is_empty());
            assert_eq!(rtnl.ingress_redirects(t0).unwrap(), vec![v0]);
            assert!(!run("tc qdisc show dev v0").contains("ingress"));
            // Nothing to remove, or no link at all: fine.
            rtnl.clear_ingress(v0).unwrap();
            rtnl.clear_ingress(4242).unwrap();
        });
    }

    #[test]
    fn filters_made_by_tc_are_read() {
        let _ = in_new_netns("filters_made_by_tc_are_read", || {
            run("ip link add v0 type veth peer name v1");
            run("ip tuntap add t0 mode tap");
            run("tc qdisc add dev v0 ingress");
            run("tc filter add dev v0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev t0");
            let mut rtnl = Rtnl::new().unwrap();
            let t0 = link(&mut rtnl, "t0").index;
            let v0 = link(&mut rtnl, "v0").index;
            assert_eq!(rtnl.ingress_redirects(v0).unwrap(), vec![t0]);
            // The existing qdisc is reused, the existing redirect kept as it is.
            rtnl.redirect_ingress(v0, t0).unwrap();
            assert_eq!(rtnl.ingress_redirects(v0).unwrap(), vec![t0]);
        });
    }
}

#[cfg(test)]
mod packet_tests {
    use std::io::Write;
    use std::net::UdpSocket;

    use super::*;
    use crate::testns::{attach_tap, in_new_netns, link, read_frame, run};

    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

    /// v1 (10.9.0.1) talks to a made-up peer (10.9.0.2) behind the tap, through v0
    /// and the redirects: its ARP request comes out of the tap, the peer's answer
    /// written to the tap reaches v1, and v1's datagram then comes out of the tap.
    #[test]
    fn packets_cross_between_veth_and_tap() {
        let _ = in_new_netns("packets_cross_between_veth_and_tap", || {
            run("ip link add v0 type veth peer name v1");
            run("ip tuntap add t0 mode tap");
            let mut tap = attach_tap("t0");
            let mut rtnl = Rtnl::new().unwrap();
            let [v0, v1, t0] = ["v0", "v1", "t0"].map(|name| link(&mut rtnl, name));
            for index in [v0.index, v1.index, t0.index] {
                rtnl.set_up(index, true).unwrap();
            }
            rtnl.add_address(v1.index, "10.9.0.1".parse().unwrap(), 24)
                .unwrap();
            rtnl.redirect_ingress(v0.index, t0.index).unwrap();
            rtnl.redirect_ingress(t0.index, v0.index).unwrap();

            let socket = UdpSocket::bind("10.9.0.1:0").unwrap();
            socket.send_to(b"hello", "10.9.0.2:9").unwrap();
            let arp_request = read_frame(&mut tap, |f| {
                f.len() >= 42
                    && f[12..14] == [8, 6]
                    && f[20..22] == [0, 1]
                    && f[38..42] == [10, 9, 0, 2]
            });
            let v1_mac = v1.mac.unwrap();
            assert_eq!(arp_request[6..12], v1_mac);

            let mut reply = Vec::new();
            reply.extend_from_slice(&v1_mac);
            reply.extend_from_slice(&PEER_MAC);
            reply.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 2]);
            reply.extend_from_slice(&PEER_MAC);
            reply.extend_from_slice(&[10, 9, 0, 2]);
            reply.extend_from_slice(&v1_mac);
            reply.extend_from_slice(&[10, 9, 0, 1]);
            tap.write_all(&reply).unwrap();

            let datagram = read_frame(&mut tap, |f| {
                f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17 && f[30..34] == [10, 9, 0, 2]
            });
            assert_eq!(datagram[..6], PEER_MAC);
            assert!(datagram.ends_with(b"hello"));
        });
    }
}
