//! Turning one of the guest's virtio-net devices into a container interface: the steps
//! of `AddInterface`, over a small netlink trait so that their order is testable.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;

use runm_protocol::{format_mac, parse_cidr, parse_mac, Interface};

/// What `AddInterface` needs from rtnetlink, in one network namespace: the one the
/// handle was opened in (a netlink socket keeps its namespace for life).
pub trait Links: Sized + Send {
    type Error: std::error::Error + Send + Sync + 'static;
    /// A handle acting in the calling thread's network namespace.
    fn open() -> Result<Self, Self::Error>;
    /// Whether `e` says the thing to add is there already (EEXIST).
    fn is_exists(e: &Self::Error) -> bool;
    /// The index of the link whose MAC is `mac`.
    fn find(&mut self, mac: [u8; 6]) -> Result<Option<u32>, Self::Error>;
    fn set_up(&mut self, index: u32, up: bool) -> Result<(), Self::Error>;
    fn set_name(&mut self, index: u32, name: &str) -> Result<(), Self::Error>;
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Self::Error>;
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Self::Error>;
    fn move_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<(), Self::Error>;
    /// Adds an address; an IPv6 one without duplicate address detection.
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), Self::Error>;
    fn add_route(
        &mut self,
        index: u32,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<(), Self::Error>;
}

impl Links for rtnl::Rtnl {
    type Error = rtnl::RtnlError;
    fn open() -> Result<Self, Self::Error> {
        Self::new()
    }
    fn is_exists(e: &Self::Error) -> bool {
        e.is_exists()
    }
    fn find(&mut self, mac: [u8; 6]) -> Result<Option<u32>, Self::Error> {
        Ok(self.link_by_mac(mac)?.map(|l| l.index))
    }
    fn set_up(&mut self, index: u32, up: bool) -> Result<(), Self::Error> {
        rtnl::Rtnl::set_up(self, index, up)
    }
    fn set_name(&mut self, index: u32, name: &str) -> Result<(), Self::Error> {
        rtnl::Rtnl::set_name(self, index, name)
    }
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Self::Error> {
        rtnl::Rtnl::set_mac(self, index, mac)
    }
    fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Self::Error> {
        rtnl::Rtnl::set_mtu(self, index, mtu)
    }
    fn move_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<(), Self::Error> {
        rtnl::Rtnl::move_to_netns(self, index, netns)
    }
    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), Self::Error> {
        rtnl::Rtnl::add_address(self, index, addr, prefix)
    }
    fn add_route(
        &mut self,
        index: u32,
        dest: IpAddr,
        prefix: u8,
        gateway: Option<IpAddr>,
        metric: Option<u32>,
    ) -> Result<(), Self::Error> {
        rtnl::Rtnl::add_route(self, index, dest, prefix, gateway, metric)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Invalid(String),
    #[error("no device with MAC {0} in the guest")]
    NoDevice(String),
    #[error("device {0} is already in the sandbox network namespace")]
    AlreadyMoved(String),
    #[error("{step} failed: {source}")]
    Step {
        step: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A step after the move failed: the device stays in the sandbox, half configured.
    #[error("{0} (the device is left in the sandbox network namespace)")]
    InSandbox(Box<LinkError>),
}

impl LinkError {
    /// Whether the device has left the guest's root namespace for the sandbox's.
    pub fn moved(&self) -> bool {
        matches!(self, Self::InSandbox(_))
    }
}

/// An [`Interface`], parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub device_mac: [u8; 6],
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    /// Routes without a gateway first: a gateway must be reachable when a route through
    /// it is added.
    pub routes: Vec<PlannedRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRoute {
    pub dest: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub metric: Option<u32>,
}

impl std::fmt::Display for PlannedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dest, self.prefix)?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(metric) = self.metric {
            write!(f, " metric {metric}")?;
        }
        Ok(())
    }
}

impl Plan {
    /// Checks every field of `iface` (naming the first that is wrong) and parses it.
    pub fn parse(iface: &Interface) -> Result<Self, LinkError> {
        iface.validate().map_err(LinkError::Invalid)?;
        // validate() has checked every field this parses again.
        let invalid = LinkError::Invalid;
        let mut routes = Vec::with_capacity(iface.routes.len());
        for r in &iface.routes {
            let (dest, prefix) = parse_cidr(&r.destination).map_err(invalid)?;
            let gateway = match &r.gateway {
                Some(g) => Some(g.parse().map_err(|_| invalid(format!("gateway {g:?}")))?),
                None => None,
            };
            routes.push(PlannedRoute {
                dest,
                prefix,
                gateway,
                metric: r.metric,
            });
        }
        routes.sort_by_key(|r| r.gateway.is_some());
        Ok(Self {
            device_mac: parse_mac(&iface.device_mac).map_err(invalid)?,
            name: iface.name.clone(),
            mac: parse_mac(&iface.mac).map_err(invalid)?,
            mtu: iface.mtu,
            addresses: iface
                .addresses
                .iter()
                .map(|a| parse_cidr(a))
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            routes,
        })
    }

    /// The name the device goes by while it moves: names in the two namespaces may
    /// clash (device `eth1` moving into a namespace where `eth0` was renamed `eth1`),
    /// a name made of its MAC cannot.
    pub fn transit_name(&self) -> String {
        let hex: String = self.device_mac.iter().map(|b| format!("{b:02x}")).collect();
        format!("rn{hex}")
    }
}

/// Moves the device `plan` names from `root`'s namespace into `sandbox`'s (`sandbox_ns`)
/// and configures it there.
pub fn add<L: Links>(
    root: &mut L,
    sandbox: &mut L,
    sandbox_ns: BorrowedFd<'_>,
    plan: &Plan,
) -> Result<(), LinkError> {
    let device = format_mac(&plan.device_mac);
    let Some(index) = root
        .find(plan.device_mac)
        .map_err(step("find the device"))?
    else {
        return Err(match sandbox.find(plan.device_mac) {
            Ok(Some(_)) => LinkError::AlreadyMoved(device),
            _ => LinkError::NoDevice(device),
        });
    };
    root.set_up(index, false)
        .map_err(step("bring the device down"))?;
    let transit = plan.transit_name();
    root.set_name(index, &transit)
        .map_err(step(&format!("rename the device to {transit}")))?;
    root.move_to_netns(index, sandbox_ns)
        .map_err(step("move the device into the sandbox network namespace"))?;
    let in_sandbox = |e| LinkError::InSandbox(Box::new(e));
    // The index may change: the sandbox's own may be taken.
    let index = sandbox
        .find(plan.device_mac)
        .map_err(step("find the device after the move"))?
        .ok_or_else(|| LinkError::Step {
            step: "find the device after the move".into(),
            source: format!("no link with MAC {device} in the sandbox").into(),
        })
        .map_err(in_sandbox)?;
    configure(sandbox, index, plan).map_err(in_sandbox)
}

/// Configures the (down) link `index` as `plan` says.
fn configure<L: Links>(links: &mut L, index: u32, plan: &Plan) -> Result<(), LinkError> {
    links
        .set_name(index, &plan.name)
        .map_err(step(&format!("rename to {}", plan.name)))?;
    links
        .set_mac(index, plan.mac)
        .map_err(step(&format!("set MAC {}", format_mac(&plan.mac))))?;
    links
        .set_mtu(index, plan.mtu)
        .map_err(step(&format!("set MTU {}", plan.mtu)))?;
    links.set_up(index, true).map_err(step("bring it up"))?;
    for &(addr, prefix) in &plan.addresses {
        match links.add_address(index, addr, prefix) {
            Err(e) if !L::is_exists(&e) => {
                return Err(step(&format!("add address {addr}/{prefix}"))(e))
            }
            _ => {}
        }
    }
    for r in &plan.routes {
        match links.add_route(index, r.dest, r.prefix, r.gateway, r.metric) {
            Err(e) if !L::is_exists(&e) => return Err(step(&format!("add route {r}"))(e)),
            _ => {}
        }
    }
    Ok(())
}

fn step<E: std::error::Error + Send + Sync + 'static>(what: &str) -> impl FnOnce(E) -> LinkError {
    let step = what.to_string();
    move |e| LinkError::Step {
        step,
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runm_protocol::Route;

    /// Records what it is asked to do, and fails where told.
    #[derive(Debug, Default)]
    struct Fake {
        /// Links as (mac, index).
        links: Vec<([u8; 6], u32)>,
        calls: Vec<String>,
        /// A call starting with this fails with EEXIST (`exists`) or EPERM.
        fail: Option<(&'static str, bool)>,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct FakeError(nix::Error);

    impl Fake {
        fn call(&mut self, call: String) -> Result<(), FakeError> {
            let fails = self.fail.filter(|(p, _)| call.starts_with(p));
            self.calls.push(call);
            match fails {
                Some((_, true)) => Err(FakeError(nix::Error::EEXIST)),
                Some((_, false)) => Err(FakeError(nix::Error::EPERM)),
                None => Ok(()),
            }
        }
    }

    impl Links for Fake {
        type Error = FakeError;
        fn open() -> Result<Self, FakeError> {
            Ok(Self::default())
        }
        fn is_exists(e: &FakeError) -> bool {
            e.0 == nix::Error::EEXIST
        }
        fn find(&mut self, mac: [u8; 6]) -> Result<Option<u32>, FakeError> {
            Ok(self.links.iter().find(|l| l.0 == mac).map(|l| l.1))
        }
        fn set_up(&mut self, index: u32, up: bool) -> Result<(), FakeError> {
            self.call(format!("{} {index}", if up { "up" } else { "down" }))
        }
        fn set_name(&mut self, index: u32, name: &str) -> Result<(), FakeError> {
            self.call(format!("name {index} {name}"))
        }
        fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), FakeError> {
            self.call(format!("mac {index} {}", format_mac(&mac)))
        }
        fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), FakeError> {
            self.call(format!("mtu {index} {mtu}"))
        }
        fn move_to_netns(&mut self, index: u32, _: BorrowedFd<'_>) -> Result<(), FakeError> {
            self.call(format!("move {index}"))
        }
        fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> Result<(), FakeError> {
            self.call(format!("addr {index} {addr}/{prefix}"))
        }
        fn add_route(
            &mut self,
            index: u32,
            dest: IpAddr,
            prefix: u8,
            gateway: Option<IpAddr>,
            metric: Option<u32>,
        ) -> Result<(), FakeError> {
            self.call(format!(
                "route {index} {dest}/{prefix} {gateway:?} {metric:?}"
            ))
        }
    }

    const DEVICE: [u8; 6] = [0x02, 0x72, 0x75, 0x6e, 0x6d, 0x01];

    fn eth0() -> Interface {
        Interface {
            device_mac: format_mac(&DEVICE),
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            mtu: 1450,
            addresses: vec!["172.17.0.2/16".into(), "fd00::2/64".into()],
            routes: vec![
                Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: Some("172.17.0.1".into()),
                    metric: None,
                },
                Route {
                    destination: "10.0.0.0/8".into(),
                    gateway: None,
                    metric: Some(5),
                },
            ],
        }
    }

    fn run(iface: &Interface, root: &mut Fake, sandbox: &mut Fake) -> Result<(), LinkError> {
        let ns = std::fs::File::open("/dev/null").unwrap();
        let plan = Plan::parse(iface)?;
        add(root, sandbox, std::os::fd::AsFd::as_fd(&ns), &plan)
    }

    fn fakes() -> (Fake, Fake) {
        let root = Fake {
            links: vec![([0; 6], 1), (DEVICE, 2)],
            ..Fake::default()
        };
        let sandbox = Fake {
            links: vec![([0; 6], 1), (DEVICE, 7)],
            ..Fake::default()
        };
        (root, sandbox)
    }

    #[test]
    fn the_device_moves_then_is_configured_in_order() {
        let (mut root, mut sandbox) = fakes();
        run(&eth0(), &mut root, &mut sandbox).unwrap();
        assert_eq!(root.calls, ["down 2", "name 2 rn0272756e6d01", "move 2"]);
        assert_eq!(
            sandbox.calls,
            [
                "name 7 eth0",
                "mac 7 02:42:ac:11:00:02",
                "mtu 7 1450",
                "up 7",
                "addr 7 172.17.0.2/16",
                "addr 7 fd00::2/64",
                "route 7 10.0.0.0/8 None Some(5)",
                "route 7 0.0.0.0/0 Some(172.17.0.1) None",
            ]
        );
    }

    #[test]
    fn what_is_there_already_is_fine() {
        let (mut root, mut sandbox) = fakes();
        sandbox.fail = Some(("route", true));
        run(&eth0(), &mut root, &mut sandbox).unwrap();
        let (mut root, mut sandbox) = fakes();
        sandbox.fail = Some(("addr 7 fd00", true));
        run(&eth0(), &mut root, &mut sandbox).unwrap();
    }

    #[test]
    fn a_failed_step_is_named() {
        let (mut root, mut sandbox) = fakes();
        sandbox.fail = Some(("route 7 0.0.0.0", false));
        let err = run(&eth0(), &mut root, &mut sandbox).unwrap_err();
        assert_eq!(
            err.to_string(),
            "add route 0.0.0.0/0 via 172.17.0.1 failed: EPERM: Operation not permitted \
             (the device is left in the sandbox network namespace)"
        );
        assert!(err.moved());
        let (mut root, mut sandbox) = fakes();
        root.fail = Some(("move", false));
        let err = run(&eth0(), &mut root, &mut sandbox).unwrap_err();
        assert!(!err.moved(), "{err}");
        assert!(sandbox.calls.is_empty());
        let (mut root, mut sandbox) = fakes();
        sandbox.fail = Some(("mtu", false));
        let err = run(&eth0(), &mut root, &mut sandbox).unwrap_err();
        assert!(err.to_string().starts_with("set MTU 1450 failed"), "{err}");
        assert_eq!(sandbox.calls.len(), 3, "nothing after the failed step");
    }

    #[test]
    fn a_missing_or_moved_device_is_named() {
        let (mut root, mut sandbox) = fakes();
        root.links.retain(|l| l.0 != DEVICE);
        let err = run(&eth0(), &mut root, &mut sandbox).unwrap_err();
        assert_eq!(
            err.to_string(),
            "device 02:72:75:6e:6d:01 is already in the sandbox network namespace"
        );
        sandbox.links.retain(|l| l.0 != DEVICE);
        let err = run(&eth0(), &mut root, &mut sandbox).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no device with MAC 02:72:75:6e:6d:01 in the guest"
        );
        assert!(root.calls.is_empty() && sandbox.calls.is_empty());
    }

    #[test]
    fn bad_fields_are_refused_before_anything_is_done() {
        let (mut root, mut sandbox) = fakes();
        let mut iface = eth0();
        iface.routes[0].gateway = Some("fd00::1".into());
        let err = run(&iface, &mut root, &mut sandbox).unwrap_err();
        assert!(err.to_string().starts_with("routes[0]:"), "{err}");
        assert!(root.calls.is_empty() && sandbox.calls.is_empty());
    }
}
