//! Routes of the main table through one link, IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libc::{RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PRIORITY, RTA_TABLE};
use netlink_packet_core::{Parseable, ParseableParametrized, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteLwEnCapType, RouteMessage,
    RouteMessageBuffer, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::address::{check_prefix, family};
use crate::{Rtnl, RtnlError};

/// RTM_NEWROUTE, the kernel's answer to a route dump.
const RTM_NEWROUTE: u16 = 24;

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The destination network (0.0.0.0 or :: with prefix 0 for a default route).
    pub dest: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub metric: Option<u32>,
    /// Made by the kernel for an address (proto kernel): it comes back with the
    /// address, so it is not one to copy.
    pub kernel: bool,
    /// Scope link: the destination is on the link, reached without a gateway.
    pub link_scope: bool,
}

impl Rtnl {
    /// The unicast routes of the main table whose output interface is `index`, IPv4
    /// then IPv6. Multipath routes are not listed. ENODEV if there is no such link.
    pub fn routes(&mut self, index: u32) -> Result<Vec<RouteEntry>, RtnlError> {
        let op = format!("list the routes through interface {index}");
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            // Filters the kernel applies itself under strict checking; the answer is
            // filtered here too, for kernels that ignore them.
            message.header.address_family = family;
            message.header.table = RouteHeader::RT_TABLE_MAIN;
            message.attributes.push(RouteAttribute::Oif(index));
            let request = RouteNetlinkMessage::GetRoute(message);
            routes.extend(self.conn.dump(&op, request, |kind, payload| {
                parse_route(kind, payload, index)
            })?);
        }
        Ok(routes)
    }

    /// Adds a route to `dest/prefix` through link `index` to the main table, with
    /// protocol boot as `ip route add` gives it: scope link without a gateway (the
    /// destination is on the link), scope universe through one. Add the link-scope
    /// route to a gateway before a route through it. EEXIST if it is there.
    pub fn add_route(
        &mut self,
        index: u32,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<(), RtnlError> {
        let mut op = format!("add route {dest}/{prefix}");
        if let Some(gateway) = gateway {
            op += &format!(" via {gateway}");
        }
        op += &format!(" through interface {index}");
        if let Some(metric) = metric {
            op += &format!(" metric {metric}");
        }
        check_prefix(&op, dest, prefix)?;
        if gateway.is_some_and(|g| g.is_ipv4() != dest.is_ipv4()) {
            return Err(RtnlError::InvalidArgument {
                op,
                detail: "the gateway's address family differs from the destination's".into(),
            });
        }
        let mut message = RouteMessage::default();
        message.header.address_family = family(dest);
        message.header.destination_prefix_length = prefix;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        message.header.kind = RouteType::Unicast;
        if prefix > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(dest.into()));
        }
        if let Some(gateway) = gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        message.attributes.push(RouteAttribute::Oif(index));
        if let Some(metric) = metric {
            message.attributes.push(RouteAttribute::Priority(metric));
        }
        self.conn.ack(
            &op,
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

/// A main-table unicast route through `index` from an RTM_NEWROUTE payload. Attributes
/// are parsed one at a time, and one that fails to parse is passed over.
pub(crate) fn parse_route(kind: u16, payload: &[u8], index: u32) -> Option<RouteEntry> {
    if kind != RTM_NEWROUTE {
        return None;
    }
    let buf = RouteMessageBuffer::new_checked(payload).ok()?;
    let header = RouteHeader::parse(&buf).ok()?;
    if header.kind != RouteType::Unicast || header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let param = (header.address_family, header.kind, RouteLwEnCapType::None);
    let mut table = u32::from(header.table);
    let (mut dest, mut gateway, mut oif, mut metric) = (None, None, None, None);
    for nla in buf.attributes().map_while(Result::ok) {
        // Only what is read is parsed; an odd value there drops the route rather than
        // listing it wrong (a destination misread as the default, say).
        if ![RTA_DST, RTA_GATEWAY, RTA_OIF, RTA_PRIORITY, RTA_TABLE].contains(&nla.kind()) {
            continue;
        }
        match RouteAttribute::parse_with_param(&nla, param).ok()? {
            RouteAttribute::Destination(a) => dest = Some(ip(a)?),
            RouteAttribute::Gateway(a) => gateway = Some(ip(a)?),
            RouteAttribute::Oif(i) => oif = Some(i),
            RouteAttribute::Priority(m) => metric = Some(m),
            RouteAttribute::Table(t) => table = t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
        return None;
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(RouteEntry {
        dest: dest.unwrap_or(unspecified),
        prefix: header.destination_prefix_length,
        gateway,
        metric,
        kernel: header.protocol == RouteProtocol::Kernel,
        link_scope: header.scope == RouteScope::Link,
    })
}

fn ip(address: RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::{in_new_netns, link, run};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routes_are_added_and_listed_with_kernel_ones_flagged() {
        let _ = in_new_netns(
            "routes_are_added_and_listed_with_kernel_ones_flagged",
            || {
                run("ip link add v0 type veth peer name v1");
                let mut rtnl = Rtnl::new().unwrap();
                let v0 = link(&mut rtnl, "v0").index;
                let v1 = link(&mut rtnl, "v1").index;
                rtnl.set_up(v0, true).unwrap();
                rtnl.set_up(v1, true).unwrap();
                rtnl.add_address(v0, ip("10.0.0.2"), 24).unwrap();
                rtnl.add_address(v0, ip("fd00::2"), 64).unwrap();
                rtnl.add_address(v1, ip("10.9.0.2"), 24).unwrap();

                // Link scope first, then through a gateway on it, then the default.
                rtnl.add_route(v0, ip("10.1.0.0"), 16, None, None).unwrap();
                rtnl.add_route(v0, ip("10.2.0.0"), 16, Some(ip("10.1.0.1")), Some(50))
                    .unwrap();
                rtnl.add_route(v0, ip("0.0.0.0"), 0, Some(ip("10.0.0.1")), None)
                    .unwrap();
                rtnl.add_route(v0, ip("::"), 0, Some(ip("fd00::1")), Some(1024))
                    .unwrap();

                let routes = rtnl.routes(v0).unwrap();
                let find = |dest: &str, prefix| {
                    routes
                        .iter()
                        .find(|r| r.dest == ip(dest) && r.prefix == prefix)
                        .unwrap_or_else(|| panic!("no route to {dest}/{prefix} in {routes:?}"))
                };
                let connected = find("10.0.0.0", 24);
                assert!(connected.kernel && connected.link_scope && connected.gateway.is_none());
                assert_eq!(
                    find("10.1.0.0", 16),
                    &RouteEntry {
                        dest: ip("10.1.0.0"),
                        prefix: 16,
                        gateway: None,
                        metric: None,
                        kernel: false,
                        link_scope: true
                    }
                );
                assert_eq!(
                    find("10.2.0.0", 16),
                    &RouteEntry {
                        dest: ip("10.2.0.0"),
                        prefix: 16,
                        gateway: Some(ip("10.1.0.1")),
                        metric: Some(50),
                        kernel: false,
                        link_scope: false
                    }
                );
                let default = find("0.0.0.0", 0);
                assert_eq!(default.gateway, Some(ip("10.0.0.1")));
                assert!(!default.kernel && !default.link_scope);
                assert!(find("fd00::", 64).kernel);
                assert_eq!(find("::", 0).gateway, Some(ip("fd00::1")));
                // Only v0's routes, and none of the local table's.
                assert!(
                    !routes.iter().any(|r| r.dest == ip("10.9.0.0")),
                    "{routes:?}"
                );
                assert!(
                    !routes.iter().any(|r| r.dest == ip("10.0.0.2")),
                    "{routes:?}"
                );
                let shown = run("ip route show dev v0 proto boot");
                assert!(
                    shown.contains("10.2.0.0/16 via 10.1.0.1 metric 50"),
                    "{shown}"
                );

                let again = rtnl
                    .add_route(v0, ip("10.1.0.0"), 16, None, None)
                    .unwrap_err();
                assert!(again.is_exists(), "{again}");
                let mixed = rtnl
                    .add_route(v0, ip("::"), 0, Some(ip("10.0.0.1")), None)
                    .unwrap_err();
                assert!(
                    matches!(mixed, RtnlError::InvalidArgument { .. }),
                    "{mixed}"
                );
                // Host bits set: the kernel refuses, and says why.
                let bad = rtnl
                    .add_route(v0, ip("10.3.0.1"), 16, None, None)
                    .unwrap_err();
                assert_eq!(bad.errno(), Some(libc::EINVAL), "{bad}");
            },
        );
    }
}
