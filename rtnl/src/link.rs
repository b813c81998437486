//! Links: listing them, and setting state, name, MAC, MTU and network namespace.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{parse_string, parse_u32, NlasIterator, Parseable};
use netlink_packet_route::link::{
    LinkAttribute, LinkFlags, LinkHeader, LinkMessage, LinkMessageBuffer,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Rtnl, RtnlError};

/// RTM_NEWLINK, the kernel's answer to a link dump.
const RTM_NEWLINK: u16 = 16;
/// The most bytes an interface name may have (IFNAMSIZ less the NUL).
const MAX_NAME_LEN: usize = 15;

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for links without an Ethernet-sized hardware address (e.g. a tun).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// IFLA_INFO_KIND: "veth", "tun", "macvlan", "bridge", ...; None for physical
    /// devices (virtio-net) and loopback.
    pub kind: Option<String>,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub loopback: bool,
}

impl Rtnl {
    /// Every link in the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>, RtnlError> {
        let request = RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.conn.dump("list interfaces", request, parse_link)
    }

    /// The link whose MAC address is `mac`, if any.
    pub fn link_by_mac(&mut self, mac: [u8; 6]) -> Result<Option<Link>, RtnlError> {
        Ok(self.links()?.into_iter().find(|l| l.mac == Some(mac)))
    }

    /// The link named `name`, if any.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, RtnlError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Brings a link administratively up or down.
    pub fn set_up(&mut self, index: u32, up: bool) -> Result<(), RtnlError> {
        let mut message = link_message(index);
        message.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        message.header.change_mask = LinkFlags::Up;
        let state = if up { "up" } else { "down" };
        self.set_link(&format!("bring interface {index} {state}"), message)
    }

    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), RtnlError> {
        let op = format!("rename interface {index} to {name:?}");
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['\0', '/']) {
            return Err(RtnlError::InvalidArgument {
                op,
                detail: format!("not an interface name (1 to {MAX_NAME_LEN} bytes, no '/')"),
            });
        }
        let mut message = link_message(index);
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        self.set_link(&op, message)
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), RtnlError> {
        let mut message = link_message(index);
        message
            .attributes
            .push(LinkAttribute::Address(mac.to_vec()));
        let op = format!(
            "set the MAC address of interface {index} to {}",
            fmt_mac(mac)
        );
        self.set_link(&op, message)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), RtnlError> {
        let mut message = link_message(index);
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(
            &format!("set the MTU of interface {index} to {mtu}"),
            message,
        )
    }

    /// Moves a link into the network namespace `netns` (an open `/proc/.../ns/net` or
    /// bind mount of one). The link gets a new index there, and usually keeps its name.
    pub fn move_to_netns(&mut self, index: u32, netns: BorrowedFd) -> Result<(), RtnlError> {
        let mut message = link_message(index);
        message
            .attributes
            .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
        let op = format!("move interface {index} to another network namespace");
        self.set_link(&op, message)
    }

    fn set_link(&mut self, op: &str, message: LinkMessage) -> Result<(), RtnlError> {
        self.conn.ack(op, RouteNetlinkMessage::SetLink(message), 0)
    }
}

fn link_message(index: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header = LinkHeader {
        index,
        ..LinkHeader::default()
    };
    message
}

/// A link from an RTM_NEWLINK payload. Attributes are read one at a time, and only
/// those needed, so one this crate does not know (or cannot parse) costs nothing.
pub(crate) fn parse_link(kind: u16, payload: &[u8]) -> Option<Link> {
    if kind != RTM_NEWLINK {
        return None;
    }
    let buf = LinkMessageBuffer::new_checked(payload).ok()?;
    let header = LinkHeader::parse(&buf).ok()?;
    let mut link = Link {
        index: header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        kind: None,
        up: header.flags.contains(LinkFlags::Up),
        loopback: header.flags.contains(LinkFlags::Loopback),
    };
    for nla in buf.attributes().map_while(Result::ok) {
        let value = nla.value();
        match nla.kind() {
            libc::IFLA_IFNAME => link.name = parse_string(value).unwrap_or_default(),
            libc::IFLA_ADDRESS => link.mac = value.try_into().ok(),
            libc::IFLA_MTU => link.mtu = parse_u32(value).unwrap_or_default(),
            libc::IFLA_LINKINFO => link.kind = info_kind(value),
            _ => {}
        }
    }
    Some(link)
}

/// IFLA_INFO_KIND inside an IFLA_LINKINFO nest.
fn info_kind(linkinfo: &[u8]) -> Option<String> {
    NlasIterator::new(linkinfo)
        .map_while(Result::ok)
        .find(|nla| nla.kind() == libc::IFLA_INFO_KIND)
        .and_then(|nla| parse_string(nla.value()).ok())
        .filter(|kind| !kind.is_empty())
}

/// A MAC address as `ip link` writes it.
pub(crate) fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::testns::{in_new_netns, link, other_netns, run};

    #[test]
    fn links_are_listed_with_kind_mac_and_mtu() {
        let _ = in_new_netns("links_are_listed_with_kind_mac_and_mtu", || {
            run("ip link add v0 type veth peer name v1");
            run("ip tuntap add t0 mode tap");
            run("ip link set v0 address 02:00:00:00:00:0a mtu 1400");
            let mut rtnl = Rtnl::new().unwrap();
            let links = rtnl.links().unwrap();
            assert_eq!(links.len(), 4, "{links:?}");

            let lo = links.iter().find(|l| l.name == "lo").unwrap();
            assert!(lo.loopback);
            assert_eq!(lo.kind, None);
            assert_eq!(lo.index, 1);

            let v0 = link(&mut rtnl, "v0");
            assert_eq!(v0.kind.as_deref(), Some("veth"));
            assert_eq!(v0.mac, Some([2, 0, 0, 0, 0, 0x0a]));
            assert_eq!(v0.mtu, 1400);
            assert!(!v0.up && !v0.loopback);
            assert_eq!(link(&mut rtnl, "v1").mtu, 1500);

            let t0 = link(&mut rtnl, "t0");
            assert_eq!(t0.kind.as_deref(), Some("tun"));
            assert!(t0.mac.is_some());

            let found = rtnl.link_by_mac([2, 0, 0, 0, 0, 0x0a]).unwrap();
            assert_eq!(found, Some(v0));
            assert_eq!(rtnl.link_by_mac([2, 0, 0, 0, 0, 0x0b]).unwrap(), None);
        });
    }

    #[test]
    fn a_dump_of_many_datagrams_is_read_whole() {
        let _ = in_new_netns("a_dump_of_many_datagrams_is_read_whole", || {
            let pairs = 100;
            let batch: String = (0..pairs)
                .map(|i| format!("link add a{i} type veth peer name b{i}\n"))
                .collect();
            let mut ip = std::process::Command::new("ip")
                .args(["-batch", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut ip.stdin.take().unwrap(), batch.as_bytes()).unwrap();
            assert!(ip.wait().unwrap().success());
            let mut rtnl = Rtnl::new().unwrap();
            // A dump abandoned at its first datagram does not block the next one.
            rtnl.set_timeout(std::time::Duration::ZERO);
            assert!(matches!(rtnl.links(), Err(RtnlError::Timeout { .. })));
            rtnl.set_timeout(crate::DEFAULT_TIMEOUT);
            let links = rtnl.links().unwrap();
            assert_eq!(links.len(), 2 * pairs + 1);
            assert!(links.iter().any(|l| l.name == "b99"));
        });
    }

    #[test]
    fn name_mac_mtu_and_state_are_set() {
        let _ = in_new_netns("name_mac_mtu_and_state_are_set", || {
            run("ip link add v0 type veth peer name v1");
            let mut rtnl = Rtnl::new().unwrap();
            let index = link(&mut rtnl, "v0").index;
            rtnl.set_name(index, "eth7").unwrap();
            rtnl.set_mac(index, [2, 0xaa, 0, 0, 0, 1]).unwrap();
            rtnl.set_mtu(index, 1280).unwrap();
            rtnl.set_up(index, true).unwrap();
            let eth7 = link(&mut rtnl, "eth7");
            assert_eq!(eth7.index, index);
            assert_eq!(eth7.mac, Some([2, 0xaa, 0, 0, 0, 1]));
            assert_eq!(eth7.mtu, 1280);
            assert!(eth7.up);
            assert!(run("ip link show eth7").contains("02:aa:00:00:00:01"));

            rtnl.set_up(index, false).unwrap();
            assert!(!link(&mut rtnl, "eth7").up);
        });
    }

    #[test]
    fn failures_name_the_operation_and_errno() {
        let _ = in_new_netns("failures_name_the_operation_and_errno", || {
            let mut rtnl = Rtnl::new().unwrap();
            let err = rtnl.set_mtu(4242, 1500).unwrap_err();
            assert_eq!(err.errno(), Some(libc::ENODEV), "{err}");
            assert!(err.is_no_device());
            assert!(
                err.to_string()
                    .starts_with("cannot set the MTU of interface 4242 to 1500: No such device"),
                "{err}"
            );

            run("ip link add v0 type veth peer name v1");
            let index = link(&mut rtnl, "v0").index;
            let err = rtnl.set_name(index, "v1").unwrap_err();
            assert!(err.is_exists(), "{err}");
            for bad in ["", "a-name-much-too-long", "a/b"] {
                let err = rtnl.set_name(index, bad).unwrap_err();
                assert!(matches!(err, RtnlError::InvalidArgument { .. }), "{err}");
            }
            // An MTU the veth refuses: EINVAL, with the kernel's reason if it gave one.
            let err = rtnl.set_mtu(index, 10).unwrap_err();
            assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
        });
    }

    #[test]
    fn link_moves_to_another_netns() {
        let _ = in_new_netns("link_moves_to_another_netns", || {
            run("ip link add v0 type veth peer name v1");
            let mut rtnl = Rtnl::new().unwrap();
            let v1 = link(&mut rtnl, "v1");
            let (netns, mut there) = other_netns();
            rtnl.move_to_netns(v1.index, netns.as_fd()).unwrap();

            assert_eq!(rtnl.link_by_name("v1").unwrap(), None);
            let moved = link(&mut there, "v1");
            assert_eq!(moved.mac, v1.mac);
            assert_eq!(moved.kind.as_deref(), Some("veth"));
            // The moved link is configured through the other namespace's socket.
            there.set_name(moved.index, "eth0").unwrap();
            there.set_up(moved.index, true).unwrap();
            assert!(link(&mut there, "eth0").up);
        });
    }
}
