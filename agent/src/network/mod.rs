//! The container's network in the guest.
//!
//! The host gives the VM one virtio-net device per container interface, each with a MAC
//! of its own; they come up as `eth0`, `eth1`, ... in the guest's root network
//! namespace. The agent keeps one more, the **sandbox** network namespace, made on first
//! need (the first `AddInterface`, or a container whose config has a network namespace)
//! and kept for the VM's life: every container with a network namespace joins it
//! (libcontainer `setns`es into [`SANDBOX_NETNS`], see `spec::rewrite_config`), and
//! `AddInterface` moves devices into it and gives them the host interface's name, MAC,
//! MTU, addresses and routes. When it is made, the agent also starts the DNS bridge in it
//! (`dns.rs`).

pub mod dns;
pub mod link;
pub mod netns;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use runm_protocol::{format_mac, Interface};

use crate::debug;
use link::{LinkError, Links, Plan};
use netns::NetnsError;

/// Where the sandbox network namespace is bind-mounted in the guest (on the agent's
/// /run tmpfs).
pub const SANDBOX_NETNS: &str = "/run/runm/netns/sandbox";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot make the sandbox network namespace: {0}")]
    Sandbox(#[from] NetnsError),
    #[error("interface {iface}: {source}")]
    Interface { iface: String, source: LinkError },
    #[error("interface {iface}: device {device} was already made interface {}{}", .other.name,
        if .other.complete { "" } else { " (not completed)" })]
    AlreadyAdded {
        iface: String,
        device: String,
        other: Added,
    },
    #[error("interface {iface}: {source}")]
    Namespace { iface: String, source: NetnsError },
    #[error("interface {iface}: cannot open netlink in the {netns} network namespace: {source}")]
    Netlink {
        iface: String,
        netns: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The guest's container network: the sandbox namespace and the devices moved into it.
#[derive(Debug)]
pub struct Network {
    path: PathBuf,
    dns: bool,
    sandbox: Mutex<Option<Arc<File>>>,
    /// Devices moved (or being moved) into the sandbox, by MAC.
    added: Mutex<HashMap<[u8; 6], Added>>,
}

/// A device given to `AddInterface`.
#[derive(Debug, Clone)]
pub struct Added {
    /// The container interface it was to become.
    pub name: String,
    /// Whether it became it: false while at work, or after a failure past the move.
    pub complete: bool,
}

impl Network {
    /// The guest's: the sandbox at [`SANDBOX_NETNS`], with the DNS bridge.
    pub fn guest() -> Self {
        Self::new(PathBuf::from(SANDBOX_NETNS), true)
    }

    /// A sandbox to be bind-mounted at `path`; `dns` starts the DNS bridge in it.
    pub fn new(path: PathBuf, dns: bool) -> Self {
        Self {
            path,
            dns,
            sandbox: Mutex::new(None),
            added: Mutex::new(HashMap::new()),
        }
    }

    fn added(&self) -> MutexGuard<'_, HashMap<[u8; 6], Added>> {
        self.added.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sandbox network namespace, made now if it is not yet.
    pub fn sandbox(&self) -> Result<Arc<File>, NetworkError> {
        let mut sandbox = self.sandbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = &*sandbox {
            return Ok(Arc::clone(ns));
        }
        let dns = self.dns;
        let (ns, listeners) = netns::create(&self.path, move || dns.then(dns::bind))?;
        debug::log(|| format!("sandbox network namespace at {}", self.path.display()));
        let started =
            listeners.map(|l| l.and_then(|(udp, tcp)| dns::start(udp, tcp, dns::VsockHost)));
        if let Some(Err(e)) = started {
            // Names on the host's networks will not resolve; the rest works.
            eprintln!("runm-agent: no DNS bridge: {e}");
        }
        let ns = Arc::new(ns);
        *sandbox = Some(Arc::clone(&ns));
        Ok(ns)
    }

    /// Where the sandbox network namespace is bind-mounted, made now if it is not yet.
    pub fn sandbox_path(&self) -> Result<&Path, NetworkError> {
        self.sandbox()?;
        Ok(&self.path)
    }

    /// Moves the device `iface.device_mac` from the calling thread's network namespace
    /// (the guest's root one) into the sandbox's, and configures it as `iface` says.
    pub fn add_interface<L: Links>(&self, iface: &Interface) -> Result<(), NetworkError> {
        let name = iface.name.clone();
        let fail = |source| NetworkError::Interface {
            iface: name.clone(),
            source,
        };
        let plan = Plan::parse(iface).map_err(fail)?;
        {
            let mut added = self.added();
            if let Some(other) = added.get(&plan.device_mac) {
                return Err(NetworkError::AlreadyAdded {
                    iface: name,
                    device: format_mac(&plan.device_mac),
                    other: other.clone(),
                });
            }
            let busy = Added {
                name: plan.name.clone(),
                complete: false,
            };
            added.insert(plan.device_mac, busy);
        }
        let outcome = self.add_planned::<L>(&plan);
        let mut added = self.added();
        match &outcome {
            Ok(()) => {
                if let Some(a) = added.get_mut(&plan.device_mac) {
                    a.complete = true;
                }
            }
            // Left in the sandbox: it cannot be found in the root namespace again.
            Err(NetworkError::Interface { source, .. }) if source.moved() => {}
            // Still in the root namespace: it may be tried again.
            Err(_) => {
                added.remove(&plan.device_mac);
            }
        }
        outcome
    }

    fn add_planned<L: Links>(&self, plan: &Plan) -> Result<(), NetworkError> {
        let netlink = |netns| {
            let iface = plan.name.clone();
            move |e: L::Error| NetworkError::Netlink {
                iface,
                netns,
                source: Box::new(e),
            }
        };
        let namespace = |source| NetworkError::Namespace {
            iface: plan.name.clone(),
            source,
        };
        let ns = self.sandbox().map_err(|e| match e {
            NetworkError::Sandbox(source) => namespace(source),
            other => other,
        })?;
        let mut root = L::open().map_err(netlink("root"))?;
        let mut sandbox = netns::run_in(ns.as_fd(), L::open)
            .map_err(namespace)?
            .map_err(netlink("sandbox"))?;
        link::add(&mut root, &mut sandbox, ns.as_fd(), plan).map_err(|source| {
            NetworkError::Interface {
                iface: plan.name.clone(),
                source,
            }
        })?;
        debug::log(|| {
            format!(
                "interface {} (device {}) is in the sandbox",
                plan.name,
                format_mac(&plan.device_mac)
            )
        });
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testns {
    //! Fresh namespaces for tests that need root.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    /// Runs `work` on a thread of its own in fresh network and mount namespaces (so
    /// that what it creates and mounts vanishes with it), given an empty tmpfs
    /// directory. `None`, said on stderr, where namespaces cannot be made (not root).
    pub fn isolated<T: Send>(work: impl FnOnce(&Path) -> T + Send) -> Option<T> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "runm-agent-net-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                if let Err(e) = unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS) {
                    eprintln!("SKIPPED: cannot make namespaces ({e}); run the tests as root");
                    return None;
                }
                let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
                mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
                mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    MsFlags::empty(),
                    None::<&str>,
                )
                .unwrap();
                Some(work(&dir))
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        let _ = std::fs::remove_dir(&dir);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::process::Command;

    use rtnl::Rtnl;
    use runm_protocol::Route;

    use super::*;

    /// Runs `ip ARGS...` in the calling thread's network namespace.
    fn ip(args: &str) {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .expect("ip (iproute2) runs");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A veth standing in for a virtio-net device whose MAC ends in `n`.
    fn device(name: &str, n: u8) -> [u8; 6] {
        let mac = [0x02, 0x72, 0x75, 0x6e, 0x6d, n];
        ip(&format!("link add {name} type veth peer name {name}-peer"));
        ip(&format!("link set {name} address {}", format_mac(&mac)));
        ip(&format!("link set {name}-peer up"));
        mac
    }

    fn iface(device_mac: [u8; 6], name: &str) -> Interface {
        Interface {
            device_mac: format_mac(&device_mac),
            name: name.into(),
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
                    destination: "::/0".into(),
                    gateway: Some("fd00::1".into()),
                    metric: Some(1024),
                },
                Route {
                    destination: "10.0.0.0/8".into(),
                    gateway: None,
                    metric: Some(5),
                },
                // The kernel made this one with the address: there already is fine.
                Route {
                    destination: "172.17.0.0/16".into(),
                    gateway: None,
                    metric: None,
                },
            ],
        }
    }

    #[test]
    fn a_device_becomes_the_container_interface_in_the_sandbox() {
        testns::isolated(|dir| {
            let mac = device("eth0", 1);
            let network = Network::new(dir.join("sandbox"), false);
            network.add_interface::<Rtnl>(&iface(mac, "eth0")).unwrap();
            let mut root = Rtnl::new().unwrap();
            assert!(root.link_by_name("eth0").unwrap().is_none(), "moved");
            let ns = network.sandbox().unwrap();
            let (link, addrs, routes) = netns::run_in(ns.as_fd(), || {
                let mut rtnl = Rtnl::new().unwrap();
                let link = rtnl
                    .link_by_name("eth0")
                    .unwrap()
                    .expect("eth0 in the sandbox");
                let addrs = rtnl.addresses(link.index).unwrap();
                let routes = rtnl.routes(link.index).unwrap();
                (link, addrs, routes)
            })
            .unwrap();
            assert_eq!(link.mac, Some([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]));
            assert_eq!(link.mtu, 1450);
            assert!(link.up);
            let addrs: Vec<(IpAddr, u8)> = addrs.iter().map(|a| (a.addr, a.prefix)).collect();
            for want in [("172.17.0.2", 16), ("fd00::2", 64)] {
                let want = (want.0.parse().unwrap(), want.1);
                assert!(addrs.contains(&want), "{want:?} in {addrs:?}");
            }
            let has = |dest: &str, prefix: u8, gw: Option<&str>| {
                let dest: IpAddr = dest.parse().unwrap();
                let gw: Option<IpAddr> = gw.map(|g| g.parse().unwrap());
                routes
                    .iter()
                    .any(|r| r.dest == dest && r.prefix == prefix && r.gateway == gw)
            };
            assert!(has("0.0.0.0", 0, Some("172.17.0.1")), "{routes:?}");
            assert!(has("::", 0, Some("fd00::1")), "{routes:?}");
            assert!(has("10.0.0.0", 8, None), "{routes:?}");

            // Once is all.
            let err = network
                .add_interface::<Rtnl>(&iface(mac, "eth0"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("already made interface eth0"), "{err}");
        });
    }

    #[test]
    fn names_may_be_swapped_between_the_guest_and_the_container() {
        testns::isolated(|dir| {
            let first = device("eth0", 1);
            let second = device("eth1", 2);
            let network = Network::new(dir.join("sandbox"), false);
            let mut one = iface(first, "eth1");
            one.routes.clear();
            let mut two = iface(second, "eth0");
            two.mac = "02:42:ac:12:00:02".into();
            two.addresses = vec!["172.18.0.2/16".into()];
            two.routes.clear();
            network.add_interface::<Rtnl>(&one).unwrap();
            network.add_interface::<Rtnl>(&two).unwrap();
            let ns = network.sandbox().unwrap();
            let names = netns::run_in(ns.as_fd(), || {
                let mut rtnl = Rtnl::new().unwrap();
                let mut names: Vec<(String, Option<[u8; 6]>)> = rtnl
                    .links()
                    .unwrap()
                    .into_iter()
                    .map(|l| (l.name, l.mac))
                    .collect();
                names.sort();
                names
            })
            .unwrap();
            assert_eq!(
                names,
                [
                    ("eth0".into(), Some([0x02, 0x42, 0xac, 0x12, 0, 2])),
                    ("eth1".into(), Some([0x02, 0x42, 0xac, 0x11, 0, 2])),
                    ("lo".into(), Some([0; 6])),
                ]
            );
        });
    }

    #[test]
    fn failures_name_the_interface_and_the_step() {
        testns::isolated(|dir| {
            let network = Network::new(dir.join("sandbox"), false);
            let err = network
                .add_interface::<Rtnl>(&iface([2, 0, 0, 0, 0, 9], "eth0"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "interface eth0: no device with MAC 02:00:00:00:00:09 in the guest"
            );
            let mac = device("eth0", 1);
            let mut bad = iface(mac, "eth0");
            bad.mtu = 10;
            let err = network.add_interface::<Rtnl>(&bad).unwrap_err().to_string();
            assert!(err.starts_with("interface eth0: mtu:"), "{err}");
            // A gateway nothing leads to: the kernel refuses the route, after the move.
            let mut unreachable = iface(mac, "eth0");
            unreachable.routes = vec![Route {
                destination: "0.0.0.0/0".into(),
                gateway: Some("192.0.2.1".into()),
                metric: None,
            }];
            let err = network
                .add_interface::<Rtnl>(&unreachable)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("interface eth0: add route 0.0.0.0/0 via 192.0.2.1 failed:"),
                "{err}"
            );
            assert!(err.ends_with("(the device is left in the sandbox network namespace)"));
            // It is in the sandbox now, half made: said so, not done again.
            let err = network
                .add_interface::<Rtnl>(&iface(mac, "eth0"))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "interface eth0: device 02:72:75:6e:6d:01 was already made interface eth0 \
                 (not completed)"
            );
        });
    }

    #[test]
    fn the_sandbox_is_made_once_with_lo_up_and_the_dns_address() {
        testns::isolated(|dir| {
            let path = dir.join("netns/sandbox");
            let (ns, bound) = netns::create(&path, dns::bind).unwrap();
            let (udp, tcp) = bound.unwrap();
            let dns_addr = SocketAddr::from((runm_protocol::DOCKER_DNS, 53));
            assert_eq!(udp.local_addr().unwrap(), dns_addr);
            assert_eq!(tcp.local_addr().unwrap(), dns_addr);
            let here = netns::current().unwrap();
            assert!(!netns::same(&ns, &here), "a namespace of its own");
            assert!(netns::same(&ns, &File::open(&path).unwrap()), "mounted");
            let inside = netns::run_in(ns.as_fd(), netns::current).unwrap().unwrap();
            assert!(netns::same(&ns, &inside));
            // A container in the sandbox reaches the listeners.
            netns::run_in(ns.as_fd(), || {
                let client = UdpSocket::bind("127.0.0.1:0").unwrap();
                client.send_to(b"query", dns_addr).unwrap();
                let mut conn = std::net::TcpStream::connect(dns_addr).unwrap();
                std::io::Write::write_all(&mut conn, b"x").unwrap();
            })
            .unwrap();
            let mut buf = [0u8; 16];
            let (n, _) = udp.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"query");
            let (mut conn, _) = tcp.accept().unwrap();
            assert_eq!(conn.read(&mut buf).unwrap(), 1);

            let network = Network::new(dir.join("other/sandbox"), false);
            let first = network.sandbox().unwrap();
            let again = network.sandbox().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
            assert!(!netns::same(&*first, &ns));
            assert_eq!(network.sandbox_path().unwrap(), dir.join("other/sandbox"));
        });
    }
}
