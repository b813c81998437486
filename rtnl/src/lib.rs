//! A small blocking rtnetlink client, shared by runm's host side and its guest agent
//! (a static PID 1 without an async runtime): list and configure links, addresses and
//! routes, move links between network namespaces, and connect two links with tc
//! mirred redirects.
//!
//! A netlink socket keeps the network namespace it was opened in for life, so an
//! [`Rtnl`] acts in the namespace of the thread that created it, wherever it is used
//! later. Every call waits at most [`Rtnl::timeout`] for the kernel's whole answer.

mod address;
mod error;
mod link;
mod parse;
mod route;
mod socket;
mod tc;
mod watch;

#[cfg(test)]
mod garbage_tests;
#[cfg(test)]
mod testns;

use std::time::Duration;

pub use address::Address;
pub use error::RtnlError;
pub use link::Link;
pub use route::RouteEntry;
pub use socket::DEFAULT_TIMEOUT;
pub use watch::Watch;

use socket::Conn;

/// A NETLINK_ROUTE socket for requests, in the network namespace of the thread that
/// created it.
#[derive(Debug)]
pub struct Rtnl {
    conn: Conn,
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Rtnl, RtnlError> {
        Ok(Rtnl {
            conn: Conn::open(0)?,
        })
    }

    /// How long each call waits for the kernel's whole answer ([`DEFAULT_TIMEOUT`]
    /// unless set).
    pub fn timeout(&self) -> Duration {
        self.conn.timeout()
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.conn.set_timeout(timeout);
    }
}

#[cfg(test)]
mod tests {
    /// Both may be made on one thread (in one namespace) and used on another.
    #[test]
    fn sockets_can_move_between_threads() {
        fn is_send<T: Send>() {}
        is_send::<super::Rtnl>();
        is_send::<super::Watch>();
    }
}
