//! Per-source-address limits: open connections, new connections per second and failed
//! authentications per minute; and the per-connection budget of failed authentications. IPv6
//! addresses are counted per /64, the block one subscriber line usually gets, so an attacker
//! cannot escape the limit by rotating addresses within it.
//!
//! Refusals are counted too: an address may have at most [`MAX_REFUSALS_PER_IP`] refusals (429
//! or 503 being written) in progress; past that its connections are closed at once, so one
//! address cannot take the server-wide budget of refusals (`max_pending_connections`) from all
//! the others.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

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
    /// The table of addresses is full of addresses with connections open or being refused.
    TableFull,
}

/// The fewest addresses a listener's table may hold, whatever its `max_connections`.
const MIN_TRACKED_ADDRESSES: usize = 1024;

pub(crate) struct IpLimits {
    /// Replaced by a reload ([`IpLimits::reconfigure`]); read when a connection arrives.
    limits: std::sync::RwLock<AbuseLimits>,
    table: DashMap<IpAddr, Entry>,
    /// The most addresses the table holds: twice the listener's `max_connections` (at least
    /// [`MIN_TRACKED_ADDRESSES`]). Addresses with a connection open or being refused are bounded
    /// by the connections themselves; quiet addresses (kept only for their rate history) are
    /// forgotten early when the table is full, so many source addresses cannot grow it.
    max_entries: std::sync::atomic::AtomicUsize,
    /// Failed authentications not yet logged (one summary line per [`AUTH_LOG_INTERVAL`]).
    failure_log: Mutex<FailureLog>,
}

struct Entry {
    conns: u32,
    /// Refusals in progress.
    refusals: u32,
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
    pub(crate) fn new(limits: AbuseLimits, max_connections: usize) -> Self {
        Self {
            limits: std::sync::RwLock::new(limits),
            table: DashMap::new(),
            max_entries: std::sync::atomic::AtomicUsize::new(Self::entries_for(max_connections)),
            failure_log: Mutex::new(FailureLog {
                last_line: None,
                unlogged: 0,
            }),
        }
    }

    /// The entry of an address that holds a connection (so it is in the table and counts
    /// against its bound already; made again only if a sweep raced with it).
    fn held_entry(&self, k: IpAddr) -> dashmap::mapref::one::RefMut<'_, IpAddr, Entry> {
        self.table.entry(k).or_insert_with(|| self.new_entry())
    }

    fn entries_for(max_connections: usize) -> usize {
        max_connections.saturating_mul(2).max(MIN_TRACKED_ADDRESSES)
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> AbuseLimits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    fn max_entries(&self) -> usize {
        self.max_entries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A reload's new limits. The table and its counts stay (connections already open still
    /// count against the per-address cap, and spent budgets stay spent); addresses seen after
    /// this get buckets at the new rates.
    pub(crate) fn reconfigure(&self, limits: AbuseLimits, max_connections: usize) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
        self.max_entries.store(
            Self::entries_for(max_connections),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn new_entry(&self) -> Entry {
        let limits = self.limits();
        Entry {
            conns: 0,
            refusals: 0,
            handshakes: TokenBucket::new(limits.handshakes_per_ip_per_second),
            auth_failures: TokenBucket::per_minute(limits.failed_auths_per_ip_per_minute),
        }
    }

    /// The entry of `k`, made if needed; `None` when the table is full even after forgetting
    /// every quiet address.
    fn entry(&self, k: IpAddr) -> Option<dashmap::mapref::one::RefMut<'_, IpAddr, Entry>> {
        if self.table.len() >= self.max_entries() && !self.table.contains_key(&k) {
            // Forget the addresses kept only for their rate history (their buckets restart
            // full if they come back); those with connections stay.
            self.table.retain(|_, e| e.conns > 0 || e.refusals > 0);
            if self.table.len() >= self.max_entries() {
                return None;
            }
        }
        Some(self.table.entry(k).or_insert_with(|| self.new_entry()))
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
        let mut e = self.entry(k).ok_or(Refusal::TableFull)?;
        if e.conns >= self.limits().max_connections_per_ip {
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

    /// A place to refuse one connection from `ip`, or `None` when the address already has
    /// [`MAX_REFUSALS_PER_IP`] refusals in progress (close the connection at once).
    pub(crate) fn refusing(self: &Arc<Self>, ip: IpAddr) -> Option<RefusalGuard> {
        let k = key(ip);
        let mut e = self.entry(k)?;
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
        self.table.retain(|_, e| {
            e.conns > 0 || e.refusals > 0 || !e.handshakes.is_full() || !e.auth_failures.is_full()
        });
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
        let wait = self
            .limits
            .held_entry(self.key)
            .auth_failures
            .time_to_token();
        (!wait.is_zero()).then_some(wait)
    }

    /// Records a failed authentication on this connection, against its own budget (as a
    /// WebSocket session's: `max_rejected_commands_per_second`) and its address's
    /// (`failed_auths_per_ip_per_minute`); says which one it overspent, if any.
    pub(crate) fn auth_failed(&self) -> Result<(), Overspent> {
        let address = {
            let mut e = self.limits.held_entry(self.key);
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
            w.1 > self.limits.limits().max_rejected_commands_per_second
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

    /// One more place of this connection's address under `max_connections_per_ip`, for a
    /// request that runs beside others on the same connection (an HTTP/2 stream): counted as a
    /// connection would be, so that streams cannot get round the per-address cap. It takes no
    /// token of `handshakes_per_ip_per_second` (no new connection was made).
    pub(crate) fn another(&self) -> Result<IpPlace, Refusal> {
        let mut e = self.limits.held_entry(self.key);
        if e.conns >= self.limits.limits().max_connections_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        e.conns += 1;
        drop(e);
        Ok(IpPlace {
            limits: Arc::clone(&self.limits),
            key: self.key,
        })
    }
}

/// One place of an address under `max_connections_per_ip` taken by [`IpGuard::another`].
pub(crate) struct IpPlace {
    limits: Arc<IpLimits>,
    key: IpAddr,
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        if let Some(mut e) = self.limits.table.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
        }
    }
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
        limits_holding(conns, rate, 1)
    }

    fn limits_holding(conns: u32, rate: u32, max_connections: usize) -> Arc<IpLimits> {
        Arc::new(IpLimits::new(
            AbuseLimits {
                max_connections_per_ip: conns,
                handshakes_per_ip_per_second: NonZeroU32::new(rate).unwrap(),
                max_subscriptions_per_connection: 1,
                max_rejected_commands_per_second: 1,
                max_control_frames_per_second: 1,
                failed_auths_per_ip_per_minute: NonZeroU32::new(2).unwrap(),
            },
            max_connections,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn places_beside_a_connection_count_as_connections_without_a_handshake_token() {
        let l = limits(3, 1);
        let ip = IpAddr::from([10, 0, 0, 1]);
        let conn = l.admit(ip).unwrap();
        // The handshake budget (1 a second) is spent, yet places beside the connection are
        // given, up to the cap of 3, which they share with connections.
        let a = conn.another().unwrap();
        let b = conn.another().unwrap();
        assert_eq!(conn.another().err(), Some(Refusal::TooManyConnections));
        drop(a);
        let c = conn.another().unwrap();
        drop((b, c));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Given back: another connection fits again.
        let other = l.admit(ip).unwrap();
        drop((conn, other));
    }

    #[tokio::test(start_paused = true)]
    async fn many_source_addresses_cannot_grow_the_table_past_its_bound() {
        let l = limits_holding(4, 100, 600); // 1200 entries at most
        let addr = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        // Quiet addresses (connected once, gone): forgotten early when the table is full.
        for n in 0..10_000 {
            drop(l.admit(addr(n)).unwrap());
            assert!(l.len() <= 1200, "{} entries after {n}", l.len());
        }
        // Addresses holding connections are never forgotten; past the bound a new one is
        // refused until one of them goes.
        let held: Vec<IpGuard> = (20_000..21_200)
            .map(|n| l.admit(addr(n)).unwrap())
            .collect();
        assert_eq!(l.len(), 1200);
        assert_eq!(l.admit(addr(30_000)).err(), Some(Refusal::TableFull));
        assert!(l.refusing(addr(30_001)).is_none());
        // A held address still gets another connection.
        assert!(l.admit(addr(20_000)).is_ok());
        drop(held);
        assert!(l.admit(addr(30_000)).is_ok());
        assert!(l.len() <= 1200);
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
