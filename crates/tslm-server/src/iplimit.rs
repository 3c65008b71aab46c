//! Per-source-address limits: open connections and new connections per second. IPv6 addresses
//! are counted per /64, the block one subscriber line usually gets, so an attacker cannot escape
//! the limit by rotating addresses within it.
//!
//! Refusals are counted too: an address may have at most [`MAX_REFUSALS_PER_IP`] refusals (429
//! or 503 being written) in progress; past that its connections are closed at once, so one
//! address cannot take the server-wide budget of refusals (`max_pending_connections`) from all
//! the others.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use dashmap::DashMap;

use crate::config::AbuseLimits;
use crate::ratelimit::TokenBucket;

/// Refusals in progress from one address (IPv6: one /64) before its further connections are
/// closed unanswered. A refusal takes at most a second, so this answers a few per second to an
/// address that keeps retrying, and never more than this many at once.
pub(crate) const MAX_REFUSALS_PER_IP: u32 = 8;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooManyConnections,
    TooFast,
}

pub(crate) struct IpLimits {
    limits: AbuseLimits,
    table: DashMap<IpAddr, Entry>,
}

struct Entry {
    conns: u32,
    /// Refusals in progress.
    refusals: u32,
    handshakes: TokenBucket,
}

/// The address an entry is kept under.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl IpLimits {
    pub(crate) fn new(limits: AbuseLimits) -> Self {
        Self {
            limits,
            table: DashMap::new(),
        }
    }

    /// Admits one new connection from `ip`, or says why not. The guard gives the slot back.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        let k = key(ip);
        let mut e = self.table.entry(k).or_insert_with(|| Entry {
            conns: 0,
            refusals: 0,
            handshakes: TokenBucket::new(self.limits.handshakes_per_ip_per_second),
        });
        if e.conns >= self.limits.max_connections_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        if !e.handshakes.try_take() {
            return Err(Refusal::TooFast);
        }
        e.conns += 1;
        Ok(IpGuard {
            limits: Arc::clone(self),
            key: k,
        })
    }

    /// A place to refuse one connection from `ip`, or `None` when the address already has
    /// [`MAX_REFUSALS_PER_IP`] refusals in progress (close the connection at once).
    pub(crate) fn refusing(self: &Arc<Self>, ip: IpAddr) -> Option<RefusalGuard> {
        let k = key(ip);
        let mut e = self.table.entry(k).or_insert_with(|| Entry {
            conns: 0,
            refusals: 0,
            handshakes: TokenBucket::new(self.limits.handshakes_per_ip_per_second),
        });
        if e.refusals >= MAX_REFUSALS_PER_IP {
            return None;
        }
        e.refusals += 1;
        Some(RefusalGuard {
            limits: Arc::clone(self),
            key: k,
        })
    }

    /// Forgets addresses with no connection whose handshake budget has refilled, so the table
    /// holds only addresses that are connected or were recently active.
    pub(crate) fn sweep(&self) {
        self.table
            .retain(|_, e| e.conns > 0 || e.refusals > 0 || !e.handshakes.is_full());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Holds one connection slot of an address.
pub(crate) struct IpGuard {
    limits: Arc<IpLimits>,
    key: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.table.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
        }
    }
}

/// Holds one refusal in progress of an address.
pub(crate) struct RefusalGuard {
    limits: Arc<IpLimits>,
    key: IpAddr,
}

impl Drop for RefusalGuard {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.table.get_mut(&self.key) {
            e.refusals = e.refusals.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limits(conns: u32, rate: u32) -> Arc<IpLimits> {
        Arc::new(IpLimits::new(AbuseLimits {
            max_connections_per_ip: conns,
            handshakes_per_ip_per_second: NonZeroU32::new(rate).unwrap(),
            max_subscriptions_per_connection: 1,
            max_rejected_commands_per_second: 1,
            max_control_frames_per_second: 1,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn counts_connections_per_address_and_ipv6_per_64() {
        let l = limits(2, 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let g1 = l.admit(a).unwrap();
        let _g2 = l.admit(b).unwrap();
        assert_eq!(
            l.admit(a).err(),
            Some(Refusal::TooManyConnections),
            "same /64"
        );
        assert!(l.admit(other).is_ok());
        drop(g1);
        assert!(l.admit(b).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _m = l.admit(mapped).unwrap();
        assert!(l.table.contains_key(&"10.0.0.1".parse::<IpAddr>().unwrap()));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_the_handshake_rate_and_forgets_idle_addresses() {
        let l = limits(1000, 5);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..10).filter_map(|_| l.admit(ip).ok()).count();
        assert_eq!(admitted, 5);
        assert_eq!(l.admit(ip).err(), Some(Refusal::TooFast));
        l.sweep();
        assert_eq!(l.len(), 1, "budget not refilled: kept");
        tokio::time::advance(std::time::Duration::from_secs(2)).await;
        l.sweep();
        assert_eq!(
            l.len(),
            0,
            "no connection left and budget refilled: forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_in_progress_are_capped_per_address() {
        let l = limits(1, 100);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let held: Vec<_> = std::iter::from_fn(|| l.refusing(ip)).take(100).collect();
        assert_eq!(held.len(), MAX_REFUSALS_PER_IP as usize);
        assert!(
            l.refusing("2001:db8::2".parse().unwrap()).is_none(),
            "same /64"
        );
        assert!(
            l.refusing("192.0.2.9".parse().unwrap()).is_some(),
            "others unaffected"
        );
        l.sweep();
        assert!(l.table.contains_key(&key(ip)), "kept while refusing");
        drop(held);
        assert!(l.refusing(ip).is_some());
    }
}
