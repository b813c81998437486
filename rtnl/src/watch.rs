//! Change notifications: a socket subscribed to the kernel's link, address and route
//! multicast groups, for a caller that waits for the network to settle or change.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use crate::socket::Conn;
use crate::RtnlError;

/// The groups a [`Watch`] listens to: links, IPv4/IPv6 addresses and routes.
const GROUPS: libc::c_int = libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE;

/// A netlink socket subscribed to link, IPv4/IPv6 address and route changes in the
/// network namespace of the thread that created it. Changes made after `new` returns
/// are seen.
#[derive(Debug)]
pub struct Watch {
    conn: Conn,
}

impl Watch {
    pub fn new() -> Result<Watch, RtnlError> {
        let groups = u32::try_from(GROUPS).unwrap_or_default();
        Ok(Watch {
            conn: Conn::open(groups)?,
        })
    }

    /// True if something changed within `timeout`; drains what is queued, so the next
    /// call reports only later changes.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, RtnlError> {
        let io_err = |source| RtnlError::Io {
            op: "wait for network changes".to_owned(),
            source,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if self.conn.drain().map_err(io_err)? {
                return Ok(true);
            }
            if !self.conn.wait_readable(deadline).map_err(io_err)? {
                return Ok(false);
            }
        }
    }
}

/// For a caller's own poll loop: readable when a change is queued (then call `wait`
/// with a zero timeout to drain it).
impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.fd()
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;
    use crate::testns::{in_new_netns, link, run};
    use crate::Rtnl;

    #[test]
    fn changes_are_seen_and_quiet_times_out() {
        let _ = in_new_netns("changes_are_seen_and_quiet_times_out", || {
            let mut watch = Watch::new().unwrap();
            let start = Instant::now();
            assert!(!watch.wait(Duration::from_millis(200)).unwrap());
            assert!(start.elapsed() >= Duration::from_millis(200));

            // Another thread of this namespace adds a link.
            let adder = thread::spawn(|| {
                thread::sleep(Duration::from_millis(100));
                run("ip link add v0 type veth peer name v1");
            });
            let start = Instant::now();
            assert!(watch.wait(Duration::from_secs(1)).unwrap());
            assert!(start.elapsed() < Duration::from_secs(1));
            adder.join().unwrap();

            // Once what followed is drained, quiet again.
            let settle = Instant::now();
            while watch.wait(Duration::from_millis(100)).unwrap() {
                assert!(settle.elapsed() < Duration::from_secs(5), "never quiet");
            }

            // An address is a change too.
            let mut rtnl = Rtnl::new().unwrap();
            let v0 = link(&mut rtnl, "v0").index;
            rtnl.add_address(v0, "10.0.0.2".parse().unwrap(), 24)
                .unwrap();
            assert!(
                watch.wait(Duration::ZERO).unwrap() || watch.wait(Duration::from_secs(1)).unwrap()
            );
        });
    }
}
