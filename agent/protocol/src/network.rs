//! How the host describes a container's network interface to the agent, and the DNS
//! bridge's wire format.
//!
//! Addresses travel as text (`172.17.0.2/16`, `fe80::1`) and are parsed with the
//! standard library on both sides: the agent checks every field before it touches a
//! link, since a bad route must fail the request, not half-configure the interface.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most addresses or routes one interface may carry.
pub const MAX_ADDRESSES: usize = 64;
/// Longest interface name Linux accepts (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// The vsock port the host listens on for the DNS bridge. The guest connects to it
/// once per UDP query or TCP connection it received on 127.0.0.11:53, and sends one
/// [`DnsKind`] byte. For UDP, each query and each reply then travels as DNS over TCP
/// frames it (RFC 1035 4.2.2: a 2-byte big-endian length, then the message); for TCP the
/// connection carries the raw byte stream both ways.
pub const DNS_PORT: u32 = 1053;
/// The address Docker's embedded DNS server answers on inside a container's network
/// namespace.
pub const DOCKER_DNS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);

/// The first byte of a DNS bridge connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DnsKind {
    Udp = 1,
    Tcp = 2,
}

impl DnsKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Udp),
            2 => Some(Self::Tcp),
            _ => None,
        }
    }
}

/// One network interface of the container, as the host found it in the container's
/// network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// The MAC the guest's virtio-net device was created with: how the agent finds the
    /// device that stands for this interface.
    pub device_mac: String,
    /// The name the container sees (the host interface's, e.g. `eth0`).
    pub name: String,
    /// The host interface's MAC, which the guest device takes over so that neighbours
    /// and DHCP-less IPAM see the address they assigned.
    pub mac: String,
    pub mtu: u32,
    /// Addresses with prefix length, IPv4 and IPv6 (`10.88.0.5/16`).
    pub addresses: Vec<String>,
    pub routes: Vec<Route>,
}

/// A route through the interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination with prefix length; `0.0.0.0/0` or `::/0` for the default route.
    pub destination: String,
    pub gateway: Option<String>,
    pub metric: Option<u32>,
}

/// An address with its prefix length, parsed.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(len) if len <= max => Ok((addr, len)),
        _ => Err(format!("{s:?}: prefix length must be 0..={max}")),
    }
}

/// A MAC address in `aa:bb:cc:dd:ee:ff` form, parsed.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2);
        *byte = part
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    if parts.next().is_some() {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    Ok(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

impl Interface {
    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), String> {
        parse_mac(&self.device_mac).map_err(|e| format!("device_mac: {e}"))?;
        parse_mac(&self.mac).map_err(|e| format!("mac: {e}"))?;
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_IFNAME_LEN
            && self.name != "."
            && self.name != ".."
            && !self
                .name
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if !name_ok {
            return Err(format!("name: {:?} is not an interface name", self.name));
        }
        if !(68..=65535).contains(&self.mtu) {
            return Err(format!("mtu: {} is not in 68..=65535", self.mtu));
        }
        if self.addresses.len() > MAX_ADDRESSES || self.routes.len() > MAX_ADDRESSES {
            return Err(format!(
                "more than {MAX_ADDRESSES} addresses or routes on one interface"
            ));
        }
        for (i, a) in self.addresses.iter().enumerate() {
            parse_cidr(a).map_err(|e| format!("addresses[{i}]: {e}"))?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            let (dest, _) =
                parse_cidr(&r.destination).map_err(|e| format!("routes[{i}].destination: {e}"))?;
            if let Some(gw) = &r.gateway {
                let gw: IpAddr = gw
                    .parse()
                    .map_err(|_| format!("routes[{i}].gateway: {gw:?} is not an IP address"))?;
                if gw.is_ipv4() != dest.is_ipv4() {
                    return Err(format!(
                        "routes[{i}]: gateway {gw} is not of the destination's family"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0() -> Interface {
        Interface {
            device_mac: "02:72:75:6e:6d:00".into(),
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1500,
            addresses: vec!["172.17.0.2/16".into(), "fd00::2/64".into()],
            routes: vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: Some("172.17.0.1".into()),
                metric: None,
            }],
        }
    }

    #[test]
    fn a_docker_bridge_interface_is_valid() {
        eth0().validate().unwrap();
    }

    #[test]
    fn each_bad_field_is_named() {
        type Break = fn(&mut Interface);
        let cases: Vec<(Break, &str)> = vec![
            (|i| i.mac = "02:42:ac:11:00".into(), "mac:"),
            (|i| i.device_mac = "zz:42:ac:11:00:02".into(), "device_mac:"),
            (|i| i.name = "a/b".into(), "name:"),
            (|i| i.name = "averyveryverylongname".into(), "name:"),
            (|i| i.mtu = 10, "mtu:"),
            (|i| i.addresses[1] = "fd00::2/129".into(), "addresses[1]:"),
            (|i| i.addresses[0] = "172.17.0.2".into(), "addresses[0]:"),
            (
                |i| i.routes[0].gateway = Some("fd00::1".into()),
                "routes[0]:",
            ),
            (
                |i| i.routes[0].destination = "x/0".into(),
                "routes[0].destination:",
            ),
        ];
        for (break_it, field) in cases {
            let mut i = eth0();
            break_it(&mut i);
            let err = i.validate().unwrap_err();
            assert!(err.starts_with(field), "{err} should name {field}");
        }
    }

    #[test]
    fn macs_round_trip() {
        let mac = parse_mac("02:42:AC:11:00:02").unwrap();
        assert_eq!(format_mac(&mac), "02:42:ac:11:00:02");
        assert!(parse_mac("02:42:ac:11:00:02:00").is_err());
    }
}
