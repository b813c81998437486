//! The data path between a container interface and the guest: a tap in the same
//! namespace, joined to the interface by tc mirred redirects both ways (Kata's
//! "tcfilter" model). Nothing is bridged and the interface keeps its addresses, so
//! whatever the client set up around it (bridge, NAT, port mappings) works unchanged.

use rtnl::{Link, Rtnl, RtnlError};
use vmm::devices::virtio::net::Tap;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create a tap for interface {name}: {source}")]
    Tap {
        name: String,
        source: vmm::devices::virtio::net::NetError,
    },
    #[error("cannot connect interface {name} to its tap {tap}: {source}")]
    Connect {
        name: String,
        tap: String,
        source: RtnlError,
    },
}

/// Creates tap `runm<n>` and mirrors `link` and it into each other. The tap goes away
/// when its file (kept by the VMM) closes; the redirect on `link` is undone by
/// [`disconnect`].
pub fn connect(nl: &mut Rtnl, link: &Link, n: usize) -> Result<Tap, DatapathError> {
    let tap = Tap::open(&format!("runm{n}")).map_err(|source| DatapathError::Tap {
        name: link.name.clone(),
        source,
    })?;
    let err = |source| DatapathError::Connect {
        name: link.name.clone(),
        tap: tap.name().to_string(),
        source,
    };
    let result = (|| {
        let tap_link = nl
            .link_by_name(tap.name())?
            .ok_or_else(|| RtnlError::InvalidArgument {
                op: format!("find tap {}", tap.name()),
                detail: "it is not in the namespace it was made in".into(),
            })?;
        // Frames the guest sends are as big as the interface allows, no bigger.
        nl.set_mtu(tap_link.index, link.mtu)?;
        nl.set_up(tap_link.index, true)?;
        nl.redirect_ingress(link.index, tap_link.index)?;
        nl.redirect_ingress(tap_link.index, link.index)
    })();
    match result {
        Ok(()) => Ok(tap),
        Err(e) => {
            disconnect(nl, link.index);
            Err(err(e))
        }
    }
}

/// Removes the redirect from the interface `index` (its ingress qdisc), if any.
pub fn disconnect(nl: &mut Rtnl, index: u32) {
    if let Err(e) = nl.clear_ingress(index) {
        log::warn!("cannot remove the redirect from interface {index}: {e}");
    }
}
