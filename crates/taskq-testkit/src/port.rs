//! Free loopback ports for the servers a test starts.
//!
//! The kernel picks an unused port and the probe listener is closed before the port is
//! returned, so another process may take the port before the caller binds it. Callers
//! that spawn a server therefore retry with a fresh port when the server reports
//! "address in use" ([`crate::RedisServer`] and [`crate::RedisCluster`] do). Within one
//! process a port is never handed out twice, so tests running in parallel threads of the
//! same test binary cannot collide with each other.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

/// Ports this process has already handed out.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and that this process has
/// not returned before.
///
/// # Panics
///
/// Panics if the loopback interface cannot be bound at all.
pub fn free_port() -> u16 {
    for _ in 0..1_000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind a probe socket on 127.0.0.1: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the probe socket's address: {e}"))
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no unused loopback port found after 1000 attempts");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_usable() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(!ports.contains(&0));
        // Parallel tests may legitimately take a returned port (that is the documented
        // race), so only require that most of them can be bound.
        let bindable = ports
            .iter()
            .filter(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, **port)).is_ok())
            .count();
        assert!(bindable >= 45, "only {bindable} of 50 ports were bindable");
    }
}
