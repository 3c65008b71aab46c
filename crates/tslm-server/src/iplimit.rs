//! Per-source-address limits: open connections, new connections per second and failed
//! authentications per minute; and the per-connection budget of failed authentications. IPv6
//! addresses are counted per /64, the block one subscriber line usually gets, so an attacker
//! cannot escape the limit by rotating addresses within it.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::config::AbuseLimits;
use crate::ratelimit::TokenBucket;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    TooManyConnections,
    TooFast,
}

pub(crate) struct IpLimits {
    limits: AbuseLimits,
    table: DashMap<IpAddr, Entry>,
    /// Failed authentications not yet logged (one summary line per [`AUTH_LOG_INTERVAL`]).
    failure_log: Mutex<FailureLog>,
}

struct Entry {
    conns: u32,
    handshakes: TokenBucket,
    /// Failed authentications: a token each, `failed_auths_per_ip_per_minute` per minute.
    auth_failures: TokenBucket,
}

/// At most one log line about failed authentications per listener and interval: a guesser
/// must not be able to fill the disk or drown the other lines.
pub(crate) const AUTH_LOG_INTERVAL: Duration = Duration::from_secs(10);

struct FailureLog {
    /// When the last line was written (`None`: never).
    last_line: Option<Instant>,
    /// Failures since that line.
    unlogged: u64,
}

/// Why a failed authentication ends the connection: its budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overspent {
    /// More than `max_rejected_commands_per_second` on this connection within one second.
    Connection,
    /// The address's `failed_auths_per_ip_per_minute` is spent; a token is back after this.
    Address(Duration),
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
            failure_log: Mutex::new(FailureLog {
                last_line: None,
                unlogged: 0,
            }),
        }
    }

    fn entry(&self, k: IpAddr) -> dashmap::mapref::one::RefMut<'_, IpAddr, Entry> {
        self.table.entry(k).or_insert_with(|| Entry {
            conns: 0,
            handshakes: TokenBucket::new(self.limits.handshakes_per_ip_per_second),
            auth_failures: TokenBucket::per_minute(self.limits.failed_auths_per_ip_per_minute),
        })
    }

    /// Counts one failed authentication for the log; `Some(n)` when a line is due now, `n`
    /// being the failures since the previous line (this one included).
    pub(crate) fn log_failure(&self) -> Option<u64> {
        let mut log = self.failure_log.lock().unwrap_or_else(|p| p.into_inner());
        log.unlogged += 1;
        let now = Instant::now();
        if log
            .last_line
            .is_some_and(|t| now.duration_since(t) < AUTH_LOG_INTERVAL)
        {
            return None;
        }
        log.last_line = Some(now);
        Some(std::mem::take(&mut log.unlogged))
    }

    /// Admits one new connection from `ip`, or says why not. The guard gives the slot back.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpGuard, Refusal> {
        let k = key(ip);
        let mut e = self.entry(k);
        if e.conns >= self.limits.max_connections_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        if !e.handshakes.try_take() {
            return Err(Refusal::TooFast);
        }
        e.conns += 1;
        drop(e);
        Ok(IpGuard {
            limits: Arc::clone(self),
            key: k,
            failures: Mutex::new((Instant::now(), 0)),
        })
    }

    /// Forgets addresses with no connection whose handshake budget has refilled, so the table
    /// holds only addresses that are connected or were recently active.
    pub(crate) fn sweep(&self) {
        self.table
            .retain(|_, e| e.conns > 0 || !e.handshakes.is_full() || !e.auth_failures.is_full());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

/// Holds one connection slot of an address, and the connection's failed authentications.
pub(crate) struct IpGuard {
    limits: Arc<IpLimits>,
    key: IpAddr,
    /// Start of the current one-second window and the failures in it.
    failures: Mutex<(Instant, u32)>,
}

impl IpGuard {
    /// While the connection's address has spent its failed-authentication budget: how long
    /// until it has one again.
    pub(crate) fn auth_blocked(&self) -> Option<Duration> {
        let wait = self.limits.entry(self.key).auth_failures.time_to_token();
        (!wait.is_zero()).then_some(wait)
    }

    /// Records a failed authentication on this connection, against its own budget (as a
    /// WebSocket session's: `max_rejected_commands_per_second`) and its address's
    /// (`failed_auths_per_ip_per_minute`); says which one it overspent, if any.
    pub(crate) fn auth_failed(&self) -> Result<(), Overspent> {
        let address = {
            let mut e = self.limits.entry(self.key);
            if e.auth_failures.try_take() {
                Ok(())
            } else {
                Err(Overspent::Address(e.auth_failures.time_to_token()))
            }
        };
        let connection = {
            let mut w = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now.duration_since(w.0) >= Duration::from_secs(1) {
                *w = (now, 0);
            }
            w.1 = w.1.saturating_add(1);
            w.1 > self.limits.limits.max_rejected_commands_per_second
        };
        address?;
        if connection {
            return Err(Overspent::Connection);
        }
        Ok(())
    }

    /// The listener's per-address limits (for its log of failures).
    pub(crate) fn limits(&self) -> &IpLimits {
        &self.limits
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.table.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
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
            failed_auths_per_ip_per_minute: NonZeroU32::new(2).unwrap(),
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
    async fn failed_authentications_spend_the_connection_and_the_address_budgets() {
        let l = limits(1000, 1000);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let g = l.admit(ip).unwrap();
        assert_eq!(g.auth_blocked(), None);
        // Connection budget: 1 per second.
        assert_eq!(g.auth_failed(), Ok(()));
        // Address budget: 2 per minute (the second failure takes the last token).
        assert_eq!(g.auth_failed(), Err(Overspent::Connection));
        assert_eq!(g.auth_blocked(), Some(Duration::from_secs(30)));
        let g2 = l.admit(ip).unwrap();
        assert_eq!(
            g2.auth_blocked(),
            Some(Duration::from_secs(30)),
            "same address"
        );
        assert_eq!(
            g2.auth_failed(),
            Err(Overspent::Address(Duration::from_secs(30)))
        );
        assert_eq!(l.admit(other).unwrap().auth_blocked(), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(g2.auth_blocked(), None, "one token back");
        drop((g, g2));
        l.sweep();
        assert_eq!(
            l.len(),
            1,
            "budget not refilled: remembered without connections"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        l.sweep();
        assert_eq!(l.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_logged_once_per_interval_with_a_count() {
        let l = limits(1, 1);
        assert_eq!(l.log_failure(), Some(1));
        assert_eq!((0..999).filter_map(|_| l.log_failure()).count(), 0);
        tokio::time::advance(AUTH_LOG_INTERVAL).await;
        assert_eq!(l.log_failure(), Some(1000));
        assert_eq!(l.log_failure(), None);
    }
}
