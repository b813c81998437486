//! Which interfaces of the container's network namespace the guest gets, and how the
//! agent must configure each: the host interface's name, MAC, MTU, addresses and routes,
//! so that the container sees on `eth0` what runc would have shown it.

use std::net::IpAddr;

use rtnl::{Link, Rtnl, RtnlError};
use runm_protocol::{format_mac, Interface, Route};

/// Kinds of link that carry no container traffic of their own: taps (runm's, and a
/// VM runtime's), bridges and dummies. A veth, macvlan, ipvlan, vlan or a physical
/// device moved into the namespace is mirrored.
const NOT_MIRRORED: &[&str] = &["tun", "bridge", "dummy"];

/// The links of the namespace that stand for a container interface, configured or not.
pub fn candidates(nl: &mut Rtnl) -> Result<Vec<Link>, RtnlError> {
    Ok(nl.links()?.into_iter().filter(is_candidate).collect())
}

pub fn is_candidate(link: &Link) -> bool {
    !link.loopback
        && link.mac.is_some()
        && !link
            .kind
            .as_deref()
            .is_some_and(|k| NOT_MIRRORED.contains(&k))
}

/// Whether a client has finished with `link`: it is up (Docker, CNI and netavark bring
/// an interface up after naming and addressing it).
pub fn is_ready(link: &Link) -> bool {
    link.up
}

/// What the agent needs to give the guest device `device_mac` the identity of `link`.
pub fn describe(nl: &mut Rtnl, link: &Link, device_mac: [u8; 6]) -> Result<Interface, RtnlError> {
    let addresses = nl
        .addresses(link.index)?
        .into_iter()
        // The guest makes its own IPv6 link-local address (the same, from the same MAC).
        .filter(|a| !(a.link_local && a.addr.is_ipv6()))
        .map(|a| format!("{}/{}", a.addr, a.prefix))
        .collect();
    let routes = nl
        .routes(link.index)?
        .into_iter()
        // The kernel's own routes (for an address's prefix, fe80::/64, multicast) come
        // back in the guest when the address is added.
        .filter(|r| !r.kernel && !is_multicast(r.dest))
        .map(|r| Route {
            destination: format!("{}/{}", r.dest, r.prefix),
            gateway: r.gateway.map(|g| g.to_string()),
            metric: r.metric,
        })
        .collect();
    Ok(Interface {
        device_mac: format_mac(&device_mac),
        name: link.name.clone(),
        mac: format_mac(&link.mac.unwrap_or(device_mac)),
        mtu: link.mtu,
        addresses,
        routes,
    })
}

fn is_multicast(ip: IpAddr) -> bool {
    ip.is_multicast()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: Option<&str>, mac: bool, loopback: bool) -> Link {
        Link {
            index: 2,
            name: "eth0".into(),
            mac: mac.then_some([2, 0x42, 0xac, 0x11, 0, 2]),
            mtu: 1500,
            kind: kind.map(str::to_string),
            up: true,
            loopback,
        }
    }

    #[test]
    fn veths_and_physical_devices_are_mirrored_taps_and_tunnels_not() {
        assert!(is_candidate(&link(Some("veth"), true, false)));
        assert!(is_candidate(&link(Some("macvlan"), true, false)));
        assert!(is_candidate(&link(None, true, false)));
        assert!(!is_candidate(&link(Some("tun"), true, false)));
        assert!(!is_candidate(&link(Some("bridge"), true, false)));
        assert!(!is_candidate(&link(None, false, false)), "sit0, tunl0");
        assert!(!is_candidate(&link(None, true, true)), "lo");
    }
}
