//! IP addresses of a link, IPv4 and IPv6.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{Parseable, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeader, AddressHeaderFlags, AddressMessage,
    AddressMessageBuffer, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Rtnl, RtnlError};

/// RTM_NEWADDR, the kernel's answer to an address dump.
const RTM_NEWADDR: u16 = 20;

/// An address on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub addr: IpAddr,
    pub prefix: u8,
    /// Scope link, e.g. IPv6's fe80::/64: only meaningful on this link, so not one to
    /// copy to another.
    pub link_local: bool,
}

impl Rtnl {
    /// The addresses of link `index`, both families. ENODEV if there is no such link.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Address>, RtnlError> {
        let mut message = AddressMessage::default();
        // With strict checking the kernel filters by index itself; older ones do not,
        // so the answer is filtered here too.
        message.header.index = index;
        let request = RouteNetlinkMessage::GetAddress(message);
        let op = format!("list the addresses of interface {index}");
        self.conn.dump(&op, request, |kind, payload| {
            parse_address(kind, payload, index)
        })
    }

    /// Adds `addr/prefix` to link `index`. An IPv6 address skips duplicate address
    /// detection (IFA_F_NODAD), so it is usable at once; an IPv4 one gets the subnet's
    /// broadcast address, as `ip addr add ... brd +` gives it. EEXIST if it is there.
    pub fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), RtnlError> {
        let op = format!("add address {addr}/{prefix} to interface {index}");
        check_prefix(&op, addr, prefix)?;
        let mut message = AddressMessage::default();
        message.header = AddressHeader {
            family: family(addr),
            prefix_len: prefix,
            flags: AddressHeaderFlags::empty(),
            scope: if addr.is_loopback() {
                AddressScope::Host
            } else {
                AddressScope::Universe
            },
            index,
        };
        message.attributes.push(AddressAttribute::Local(addr));
        message.attributes.push(AddressAttribute::Address(addr));
        match addr {
            IpAddr::V4(v4) => {
                if prefix < 31 {
                    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                    let broadcast = Ipv4Addr::from(u32::from(v4) | host_bits);
                    message
                        .attributes
                        .push(AddressAttribute::Broadcast(broadcast));
                }
            }
            IpAddr::V6(_) => {
                message.header.flags = AddressHeaderFlags::Nodad;
                message
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
        }
        self.conn.ack(
            &op,
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }
}

pub(crate) fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// Refuses a prefix longer than the address, which the kernel would only answer with
/// a bare EINVAL.
pub(crate) fn check_prefix(op: &str, addr: IpAddr, prefix: u8) -> Result<(), RtnlError> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(RtnlError::InvalidArgument {
            op: op.to_owned(),
            detail: format!("prefix length {prefix} exceeds {max}"),
        });
    }
    Ok(())
}

/// An address of link `index` from an RTM_NEWADDR payload: IFA_LOCAL (the address
/// itself, where IFA_ADDRESS is a point-to-point peer), else IFA_ADDRESS.
pub(crate) fn parse_address(kind: u16, payload: &[u8], index: u32) -> Option<Address> {
    if kind != RTM_NEWADDR {
        return None;
    }
    let buf = AddressMessageBuffer::new_checked(payload).ok()?;
    let header = AddressHeader::parse(&buf).ok()?;
    if header.index != index {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for nla in buf.attributes().map_while(Result::ok) {
        if ![libc::IFA_ADDRESS, libc::IFA_LOCAL].contains(&nla.kind()) {
            continue;
        }
        match AddressAttribute::parse(&nla).ok()? {
            AddressAttribute::Local(ip) => local = Some(ip),
            AddressAttribute::Address(ip) => address = Some(ip),
            _ => {}
        }
    }
    Some(Address {
        addr: local.or(address)?,
        prefix: header.prefix_len,
        link_local: header.scope == AddressScope::Link,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testns::{in_new_netns, link, run};

    #[test]
    fn addresses_of_both_families_are_added_and_listed() {
        let _ = in_new_netns("addresses_of_both_families_are_added_and_listed", || {
            run("ip link add v0 type veth peer name v1");
            let mut rtnl = Rtnl::new().unwrap();
            let v0 = link(&mut rtnl, "v0").index;
            let v1 = link(&mut rtnl, "v1").index;
            rtnl.set_up(v0, true).unwrap();
            rtnl.set_up(v1, true).unwrap();
            let v4: IpAddr = "10.0.0.2".parse().unwrap();
            let v6: IpAddr = "fd00::2".parse().unwrap();
            rtnl.add_address(v0, v4, 24).unwrap();
            rtnl.add_address(v0, v6, 64).unwrap();
            rtnl.add_address(v1, "10.0.0.3".parse().unwrap(), 24)
                .unwrap();

            let addresses = rtnl.addresses(v0).unwrap();
            let expect = |addr, prefix| Address {
                addr,
                prefix,
                link_local: false,
            };
            assert!(addresses.contains(&expect(v4, 24)), "{addresses:?}");
            assert!(addresses.contains(&expect(v6, 64)), "{addresses:?}");
            assert!(!addresses.iter().any(|a| a.addr.to_string() == "10.0.0.3"));
            // Both ends up: the kernel gives v0 an IPv6 link-local address of its own.
            let wait = std::time::Instant::now();
            while !rtnl.addresses(v0).unwrap().iter().any(|a| a.link_local) {
                assert!(wait.elapsed().as_secs() < 5, "no link-local address");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let shown = run("ip addr show v0");
            assert!(shown.contains("inet 10.0.0.2/24 brd 10.0.0.255"), "{shown}");
            // No duplicate address detection: usable at once, never tentative.
            let line = shown.lines().find(|l| l.contains("fd00::2/64")).unwrap();
            assert!(
                line.contains("nodad") && !line.contains("tentative"),
                "{line}"
            );

            let again = rtnl.add_address(v0, v4, 24).unwrap_err();
            assert!(again.is_exists(), "{again}");
            let expect = format!(
                "cannot add address 10.0.0.2/24 to interface {v0}: File exists (os error 17)"
            );
            assert!(again.to_string().starts_with(&expect), "{again}");
            let too_long = rtnl.add_address(v0, v4, 33).unwrap_err();
            assert!(
                matches!(too_long, RtnlError::InvalidArgument { .. }),
                "{too_long}"
            );
            let missing = rtnl.addresses(4242).unwrap_err();
            assert!(missing.is_no_device(), "{missing}");
        });
    }
}
