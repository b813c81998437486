//! The container's network. The OCI config's `network` namespace is the container's
//! network on the host ([`namespace`]). Each interface a client puts there (a veth from
//! Docker, podman or a CNI plugin) gets a virtio-net device in the VM, joined to it
//! through a tap ([`datapath`]), and the agent gives the guest device the interface's
//! name, MAC, addresses and routes ([`discover`]). runm itself never changes the host's
//! network namespace.
//!
//! Interfaces can appear at any time: before `create` (podman, CNI), from a hook after
//! the VM booted (Docker up to 27) or after `start` (Docker 28). virtio-mmio has no
//! hotplug, so the VM boots with a device for each interface already there plus
//! [`SPARE_DEVICES`], and [`watch`] hands a spare to each interface that comes later.

mod datapath;
mod discover;
pub mod dns;
mod namespace;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtnl::{Rtnl, RtnlError, Watch};
use runm_protocol::Request;
use vmm::devices::virtio::net::{NetAttacher, NetBackend, NetConfig, NetError};

use crate::agent_client::{AgentClient, AgentError};
pub use datapath::DatapathError;
pub use namespace::{enter, requested};

/// Devices beyond the interfaces present at boot. An idle virtio-net device costs the
/// guest a few KiB; one covers Docker's network and a `docker network connect`-less
/// CNI; more would only matter for interfaces added to a running container.
const SPARE_DEVICES: usize = 1;
/// Clients make an interface in several netlink steps; act once they are quiet.
const SETTLE: Duration = Duration::from_millis(300);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot read the container's network namespace: {0}")]
    Read(#[from] RtnlError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("cannot give interface {name} to the VM: {source}")]
    Attach { name: String, source: NetError },
    #[error("the guest could not configure interface {name}: {source}")]
    Agent { name: String, source: AgentError },
}

/// The VM's network devices and the interfaces they stand for.
#[derive(Debug)]
pub struct Nics {
    devices: Vec<Device>,
    backend: NetBackend,
    /// Interfaces another VM has (warned about once).
    foreign: Vec<u32>,
    /// Set at the end: no interface is taken any more.
    closed: bool,
}

#[derive(Debug)]
struct Device {
    /// The MAC the guest device is created with; the agent finds it by this.
    mac: [u8; 6],
    /// The interface (index, name) it stands for, once given one.
    link: Option<(u32, String)>,
}

/// Locally administered, and told apart by the last byte.
fn device_mac(n: usize) -> [u8; 6] {
    [
        0x02,
        0x72,
        0x75,
        0x6e,
        0x6d,
        u8::try_from(n).unwrap_or(u8::MAX),
    ]
}

impl Nics {
    /// Devices for the interfaces of the calling thread's namespace, plus spares.
    pub fn plan(backend: NetBackend) -> Result<Self, NetworkError> {
        let present = discover::candidates(&mut Rtnl::new()?)?.len();
        let devices = (0..present + SPARE_DEVICES)
            .map(|n| Device {
                mac: device_mac(n),
                link: None,
            })
            .collect();
        Ok(Self {
            devices,
            backend,
            foreign: Vec::new(),
            closed: false,
        })
    }

    /// The devices the VM boots with, none attached yet.
    pub fn vm_devices(&self) -> Vec<NetConfig> {
        self.devices
            .iter()
            .map(|d| NetConfig {
                mac: d.mac,
                tap: None,
                backend: self.backend,
            })
            .collect()
    }

    /// Gives each ready interface that has no device yet the next free one: tap, tc
    /// redirects, the device attached to the tap, then the agent configures it.
    pub fn sync(&mut self, attacher: &NetAttacher, uds: &Path) -> Result<(), NetworkError> {
        if self.closed {
            return Ok(());
        }
        let mut nl = Rtnl::new()?;
        for link in discover::candidates(&mut nl)? {
            let taken = self
                .devices
                .iter()
                .any(|d| d.link.as_ref().is_some_and(|(i, _)| *i == link.index));
            if taken || !discover::is_ready(&link) || self.foreign.contains(&link.index) {
                continue;
            }
            // Another VM's (a pod's other container, which shares the namespace).
            if !nl.ingress_redirects(link.index)?.is_empty() {
                log::warn!(
                    "interface {} is already mirrored into another VM; this one does not get it",
                    link.name
                );
                self.foreign.push(link.index);
                continue;
            }
            let Some(n) = self.devices.iter().position(|d| d.link.is_none()) else {
                log::warn!(
                    "interface {} appeared, but the VM has no network device left for it",
                    link.name
                );
                continue;
            };
            let iface = discover::describe(&mut nl, &link, self.devices[n].mac)?;
            let tap = datapath::connect(&mut nl, &link, n)?;
            // From here the redirect is ours to undo, whatever fails next.
            self.devices[n].link = Some((link.index, link.name.clone()));
            attacher
                .attach(n, tap)
                .map_err(|source| NetworkError::Attach {
                    name: link.name.clone(),
                    source,
                })?;
            log::debug!(
                "interface {} is the guest's device {n}: {iface:?}",
                link.name
            );
            AgentClient::connect(uds, runm_protocol::AGENT_PORT, CALL_TIMEOUT)
                .and_then(|mut a| a.call_ok(&Request::AddInterface { iface }, CALL_TIMEOUT))
                .map_err(|source| NetworkError::Agent {
                    name: link.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Undoes the redirects on the container's interfaces (the taps go with the VMM),
    /// and takes no interface after this.
    pub fn release(&mut self) {
        self.closed = true;
        let Ok(mut nl) = Rtnl::new() else { return };
        for (index, _) in self.devices.iter_mut().filter_map(|d| d.link.take()) {
            datapath::disconnect(&mut nl, index);
        }
    }
}

/// Removes the redirects a host process that died (SIGKILL, `delete --force`) left on
/// the interfaces of the namespace at `path`: those whose every target is gone with its
/// tap. The namespace outlives the container when its client made it (podman, CNI);
/// one runm made goes with its host process.
pub fn clean_up_after(path: &Path) {
    if !path.exists() {
        return;
    }
    let result = namespace::run_in(path, || -> Result<(), RtnlError> {
        let mut nl = Rtnl::new()?;
        let links = nl.links()?;
        for link in links.iter().filter(|l| discover::is_candidate(l)) {
            let targets = nl.ingress_redirects(link.index)?;
            let dangling =
                !targets.is_empty() && targets.iter().all(|t| !links.iter().any(|l| l.index == *t));
            if dangling {
                datapath::disconnect(&mut nl, link.index);
            }
        }
        Ok(())
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!(
            "cannot clean up the network namespace {}: {e}",
            path.display()
        ),
        Err(e) => log::warn!("{e}"),
    }
}

/// The container's network as its host process drives it: planned before the boot,
/// connected to the VM after it, watched while the container lives, released at the end.
/// Every call comes from a thread in the container's network namespace.
#[derive(Debug)]
pub struct Network {
    nics: Arc<Mutex<Nics>>,
    vm: Option<(NetAttacher, PathBuf)>,
}

impl Network {
    pub fn plan(backend: NetBackend) -> Result<Self, NetworkError> {
        Ok(Self {
            nics: Arc::new(Mutex::new(Nics::plan(backend)?)),
            vm: None,
        })
    }

    pub fn vm_devices(&self) -> Vec<NetConfig> {
        self.lock().vm_devices()
    }

    /// Connects to the booted VM whose agent listens behind `uds`: serves its DNS
    /// bridge and gives it the interfaces there now.
    pub fn connect(&mut self, attacher: NetAttacher, uds: &Path) -> Result<(), NetworkError> {
        if let Err(e) = dns::serve(uds) {
            log::warn!("no DNS bridge for the container (127.0.0.11 will not answer): {e}");
        }
        self.vm = Some((attacher, uds.to_path_buf()));
        self.sync()
    }

    /// Gives the VM the interfaces that appeared since the last call.
    pub fn sync(&self) -> Result<(), NetworkError> {
        match &self.vm {
            Some((attacher, uds)) => self.lock().sync(attacher, uds),
            None => Ok(()),
        }
    }

    /// From now on, interfaces that appear get a device as they come.
    pub fn watch(&self) {
        if let Some((attacher, uds)) = &self.vm {
            watch(self.nics.clone(), attacher.clone(), uds.clone());
        }
    }

    pub fn release(&self) {
        self.lock().release();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nics> {
        self.nics.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Watches the namespace for interfaces that come after the container was created and
/// gives each a device, until [`Nics::release`].
fn watch(nics: Arc<Mutex<Nics>>, attacher: NetAttacher, uds: PathBuf) {
    let mut watch = match Watch::new() {
        Ok(w) => w,
        Err(e) => {
            log::warn!("cannot watch the container's network namespace: {e}");
            return;
        }
    };
    std::thread::spawn(move || loop {
        match watch.wait(Duration::from_secs(1)) {
            Ok(false) => {}
            Ok(true) => {
                while let Ok(true) = watch.wait(SETTLE) {}
                let mut nics = nics.lock().unwrap_or_else(|p| p.into_inner());
                if nics.closed {
                    return;
                }
                if let Err(e) = nics.sync(&attacher, &uds) {
                    log::error!("{e}");
                }
            }
            Err(e) => {
                log::warn!("stopped watching the container's network namespace: {e}");
                return;
            }
        }
        if nics.lock().map(|n| n.closed).unwrap_or(true) {
            return;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_macs_are_unicast_local_and_distinct() {
        let macs: Vec<_> = (0..4).map(device_mac).collect();
        for m in &macs {
            assert_eq!(m[0] & 1, 0, "unicast");
            assert_eq!(m[0] & 2, 2, "locally administered");
        }
        let mut unique = macs.clone();
        unique.dedup();
        assert_eq!(unique.len(), macs.len());
    }
}
