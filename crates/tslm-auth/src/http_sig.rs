//! Signed HTTP requests, for publishing over HTTP without a session.
//!
//! A client sends three headers: [`PUBLISHER_HEADER`] (its name), [`TIMESTAMP_HEADER`] (Unix
//! seconds, decimal) and [`SIGNATURE_HEADER`] (standard base64 of the 64-byte Ed25519 signature of
//! [`canonical_request`]). The gateway, in this order:
//!
//! 1. parses the headers ([`parse_signature`], `i64` for the timestamp);
//! 2. verifies the signature with [`verify_request`] (or [`crate::keys::verify`] over
//!    [`canonical_request`]) against each of the publisher's whitelisted keys;
//! 3. only then calls [`ReplayGuard::check`], so unauthenticated garbage never fills the guard.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

use crate::keys::{SIGNATURE_BYTES, SecretKey};

/// Header holding the publisher's name.
pub const PUBLISHER_HEADER: &str = "TSLM-Publisher";
/// Header holding the request time, Unix seconds in decimal.
pub const TIMESTAMP_HEADER: &str = "TSLM-Timestamp";
/// Header holding the standard base64 of the 64-byte signature of [`canonical_request`].
pub const SIGNATURE_HEADER: &str = "TSLM-Signature";

/// The bytes signed for a request:
/// `"tslm-http-v1\n{publisher}\n{METHOD}\n{path_and_query}\n{timestamp}\n{hex sha256(body)}"`,
/// with the method uppercased and the body hash in lowercase hex.
///
/// Fields are separated by newlines, so none may contain one: values taken from an HTTP request
/// line and headers cannot, and [`verify_request`] refuses any that do.
pub fn canonical_request(
    publisher: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = crate::to_hex(&Sha256::digest(body));
    format!(
        "tslm-http-v1\n{publisher}\n{}\n{path_and_query}\n{timestamp}\n{body_hash}",
        method.to_ascii_uppercase()
    )
    .into_bytes()
}

/// The value of [`SIGNATURE_HEADER`] for a request: standard base64 of the signature of
/// [`canonical_request`] by `key`.
pub fn sign_request(
    key: &SecretKey,
    publisher: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let message = canonical_request(publisher, method, path_and_query, timestamp, body);
    STANDARD.encode(key.sign(&message))
}

/// Whether `signature` signs this request under `public_key` (strict Ed25519, as
/// [`crate::keys::verify`]). False if the publisher, method or path holds a newline, which would
/// make [`canonical_request`] ambiguous.
pub fn verify_request(
    public_key: &[u8; 32],
    publisher: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    body: &[u8],
    signature: &[u8; SIGNATURE_BYTES],
) -> bool {
    if [publisher, method, path_and_query]
        .iter()
        .any(|field| field.contains('\n'))
    {
        return false;
    }
    let message = canonical_request(publisher, method, path_and_query, timestamp, body);
    crate::keys::verify(public_key, &message, signature)
}

/// Parses the value of [`SIGNATURE_HEADER`]: standard base64 of exactly 64 bytes (surrounding
/// whitespace ignored).
pub fn parse_signature(b64: &str) -> Option<[u8; SIGNATURE_BYTES]> {
    let bytes = STANDARD.decode(b64.trim()).ok()?;
    bytes.try_into().ok()
}

/// Why [`ReplayGuard::check`] refused a (correctly signed) request. The messages name no
/// signature, key or token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// The timestamp is further from the gateway's clock than the window allows (either way).
    #[error("request timestamp outside the allowed window")]
    Stale,
    /// This exact signature was accepted before, within its window.
    #[error("request signature already used")]
    Replayed,
    /// The guard already remembers as many signatures as it may; the caller answers 503.
    #[error("too many recent signed requests, try again later")]
    Busy,
    /// The guard remembers as many of this publisher's signatures as its quota allows: only
    /// this publisher is refused, the others keep their room.
    #[error("too many recent signed requests from this publisher, try again later")]
    PublisherBusy,
}

/// Refuses stale and replayed signed requests, with bounded memory.
///
/// A request is accepted only while its timestamp is within `window` of `now` (in both
/// directions, which tolerates clock skew up to the window). Each accepted signature is remembered
/// until `timestamp + window` has passed; after that the timestamp alone refuses it as stale, so
/// it can be forgotten. At most `capacity` signatures are remembered: beyond that requests are
/// refused as [`SigError::Busy`] rather than letting memory grow.
///
/// One guard serves the whole process (every listener and address), so a request accepted on one
/// address is a replay on every other. So that one busy publisher cannot take the room of all
/// the others, each publisher (an index the caller chooses) may hold at most its quota
/// ([`ReplayGuard::with_publisher_quota`]) of remembered signatures; beyond it only that
/// publisher is refused, as [`SigError::PublisherBusy`]. With quotas that add up to no more than
/// `capacity`, [`SigError::Busy`] never happens.
///
/// Call [`ReplayGuard::check`] only **after** the signature has been verified, so that only
/// genuine requests from whitelisted keys take room in the guard. Time has a resolution of one
/// second. The guard takes `now` from the caller and never reads the clock; if `now` goes
/// backwards, timestamps already too old for a later `now` stay refused, so a forgotten
/// signature can never be accepted twice.
pub struct ReplayGuard {
    window_seconds: u64,
    capacity: usize,
    /// Most signatures remembered per publisher.
    quota: usize,
    /// Accepted signatures not yet expired.
    seen: HashSet<[u8; SIGNATURE_BYTES]>,
    /// The same signatures with their publisher, earliest expiry (`timestamp + window`) first.
    expiries: BinaryHeap<Reverse<(i64, [u8; SIGNATURE_BYTES], usize)>>,
    /// Signatures remembered per publisher (publishers with none are not kept).
    per_publisher: HashMap<usize, usize>,
    /// The latest `now` seen: entries expiring before it have been (or may be) forgotten.
    high_water: i64,
}

impl ReplayGuard {
    /// A guard accepting timestamps within `window` (whole seconds) of `now`, remembering at most
    /// `capacity` signatures (0 refuses every request as busy).
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window_seconds: window.as_secs(),
            capacity,
            quota: capacity,
            seen: HashSet::new(),
            expiries: BinaryHeap::new(),
            per_publisher: HashMap::new(),
            high_water: i64::MIN,
        }
    }

    /// Limits each publisher to `quota` remembered signatures (by default, the whole capacity).
    /// `capacity / number of publishers` keeps every publisher's room its own.
    pub fn with_publisher_quota(mut self, quota: usize) -> Self {
        self.quota = quota;
        self
    }

    /// Accepts a verified request of `publisher` signed at `timestamp` (Unix seconds) when the
    /// gateway's clock reads `now_unix`, and remembers its signature; or says why not:
    /// [`SigError::Stale`] if `|now_unix - timestamp| > window`, [`SigError::Replayed`] if this
    /// signature was accepted before, [`SigError::PublisherBusy`] if the publisher's quota of
    /// signatures is remembered, [`SigError::Busy`] if `capacity` signatures are, after
    /// forgetting expired ones. Amortised O(log n).
    pub fn check(
        &mut self,
        now_unix: i64,
        publisher: usize,
        timestamp: i64,
        signature: &[u8; SIGNATURE_BYTES],
    ) -> Result<(), SigError> {
        self.high_water = self.high_water.max(now_unix);
        self.purge();
        let expiry = self.expiry(timestamp);
        if now_unix.abs_diff(timestamp) > self.window_seconds || expiry < self.high_water {
            return Err(SigError::Stale);
        }
        if self.seen.contains(signature) {
            return Err(SigError::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(SigError::Busy);
        }
        let held = self.per_publisher.get(&publisher).copied().unwrap_or(0);
        if held >= self.quota {
            return Err(SigError::PublisherBusy);
        }
        self.seen.insert(*signature);
        self.expiries.push(Reverse((expiry, *signature, publisher)));
        self.per_publisher.insert(publisher, held.saturating_add(1));
        Ok(())
    }

    /// How many of `publisher`'s signatures are remembered.
    pub fn len_of(&self, publisher: usize) -> usize {
        self.per_publisher.get(&publisher).copied().unwrap_or(0)
    }

    /// How many signatures are remembered (expired ones are forgotten on the next `check`).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no signature is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The last second at which a request signed at `timestamp` is still fresh.
    fn expiry(&self, timestamp: i64) -> i64 {
        let window = i64::try_from(self.window_seconds).unwrap_or(i64::MAX);
        timestamp.saturating_add(window)
    }

    /// Forgets the signatures whose expiry is before the latest `now`.
    fn purge(&mut self) {
        while let Some(Reverse((expiry, _, _))) = self.expiries.peek() {
            if *expiry >= self.high_water {
                break;
            }
            if let Some(Reverse((_, signature, publisher))) = self.expiries.pop() {
                self.seen.remove(&signature);
                if let Some(n) = self.per_publisher.get_mut(&publisher) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_publisher.remove(&publisher);
                    }
                }
            }
        }
    }
}

impl fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("window_seconds", &self.window_seconds)
            .field("capacity", &self.capacity)
            .field("quota", &self.quota)
            .field("remembered", &self.seen.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::verify;

    const WINDOW: Duration = Duration::from_secs(300);
    const NOW: i64 = 1_700_000_000;

    fn sig(n: u8) -> [u8; 64] {
        [n; 64]
    }

    #[test]
    fn header_names() {
        assert_eq!(PUBLISHER_HEADER, "TSLM-Publisher");
        assert_eq!(TIMESTAMP_HEADER, "TSLM-Timestamp");
        assert_eq!(SIGNATURE_HEADER, "TSLM-Signature");
    }

    #[test]
    fn canonical_request_exact_bytes() {
        assert_eq!(
            canonical_request(
                "pub-1",
                "post",
                "/v1/publish/news?x=1",
                1_700_000_000,
                b"abc"
            ),
            b"tslm-http-v1\npub-1\nPOST\n/v1/publish/news?x=1\n1700000000\n\
              ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                .to_vec()
        );
        assert_eq!(
            canonical_request("p", "Delete", "/", -5, b""),
            b"tslm-http-v1\np\nDELETE\n/\n-5\n\
              e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .to_vec()
        );
    }

    #[test]
    fn signed_request_round_trip_verifies() {
        let key = SecretKey::generate();
        let header = sign_request(&key, "pub-1", "post", "/v1/publish/a", NOW, b"{}");
        let signature = parse_signature(&header).unwrap();
        let public = key.public_bytes();
        let canonical = canonical_request("pub-1", "POST", "/v1/publish/a", NOW, b"{}");
        assert!(verify(&public, &canonical, &signature));
        assert!(verify_request(
            &public,
            "pub-1",
            "POST",
            "/v1/publish/a",
            NOW,
            b"{}",
            &signature
        ));
        let other = SecretKey::generate();
        assert!(!verify(&other.public_bytes(), &canonical, &signature));
    }

    #[test]
    fn changing_any_field_breaks_verification() {
        let key = SecretKey::generate();
        let public = key.public_bytes();
        let signature =
            parse_signature(&sign_request(&key, "pub-1", "POST", "/a?b=1", NOW, b"body")).unwrap();
        let ok = |p: &str, m: &str, path: &str, t: i64, body: &[u8]| {
            verify(&public, &canonical_request(p, m, path, t, body), &signature)
        };
        assert!(ok("pub-1", "POST", "/a?b=1", NOW, b"body"));
        assert!(!ok("pub-2", "POST", "/a?b=1", NOW, b"body"), "publisher");
        assert!(!ok("pub-1", "PUT", "/a?b=1", NOW, b"body"), "method");
        assert!(!ok("pub-1", "POST", "/a?b=2", NOW, b"body"), "query");
        assert!(!ok("pub-1", "POST", "/b?b=1", NOW, b"body"), "path");
        assert!(
            !ok("pub-1", "POST", "/a?b=1", NOW + 1, b"body"),
            "timestamp"
        );
        assert!(!ok("pub-1", "POST", "/a?b=1", NOW, b"bodY"), "body");
        assert!(!ok("pub-1", "POST", "/a?b=1", NOW, b""), "empty body");
    }

    #[test]
    fn verify_request_refuses_newlines_in_fields() {
        let key = SecretKey::generate();
        let public = key.public_bytes();
        // A signature over a publisher holding a newline could be read with other field limits.
        for (p, m, path) in [
            ("pub\nPOST", "X", "/a"),
            ("pub", "POST\n", "/a"),
            ("pub", "POST", "/a\n1"),
        ] {
            let signature = parse_signature(&sign_request(&key, p, m, path, NOW, b"")).unwrap();
            assert!(verify(
                &public,
                &canonical_request(p, m, path, NOW, b""),
                &signature
            ));
            assert!(!verify_request(&public, p, m, path, NOW, b"", &signature));
        }
    }

    #[test]
    fn parse_signature_requires_64_bytes_of_base64() {
        assert_eq!(
            parse_signature(&STANDARD.encode([3u8; 64])),
            Some([3u8; 64])
        );
        assert_eq!(
            parse_signature(&format!(" {}\n", STANDARD.encode([3u8; 64]))),
            Some([3u8; 64])
        );
        assert_eq!(parse_signature(&STANDARD.encode([3u8; 63])), None);
        assert_eq!(parse_signature(&STANDARD.encode([3u8; 65])), None);
        assert_eq!(parse_signature("not base64!"), None);
        assert_eq!(parse_signature(""), None);
    }

    #[test]
    fn sig_error_messages_are_fixed_and_lowercase() {
        assert_eq!(
            SigError::Stale.to_string(),
            "request timestamp outside the allowed window"
        );
        assert_eq!(
            SigError::Replayed.to_string(),
            "request signature already used"
        );
        assert_eq!(
            SigError::Busy.to_string(),
            "too many recent signed requests, try again later"
        );
    }

    #[test]
    fn replay_guard_accepts_fresh_and_refuses_replay() {
        let mut guard = ReplayGuard::new(WINDOW, 10);
        assert_eq!(guard.check(NOW, 0, NOW, &sig(1)), Ok(()));
        assert_eq!(guard.check(NOW, 0, NOW, &sig(1)), Err(SigError::Replayed));
        assert_eq!(
            guard.check(NOW + 100, 0, NOW, &sig(1)),
            Err(SigError::Replayed)
        );
        assert_eq!(guard.check(NOW, 0, NOW, &sig(2)), Ok(()));
        assert_eq!(guard.len(), 2);
    }

    #[test]
    fn replay_guard_refuses_timestamps_beyond_the_window_both_ways() {
        let mut guard = ReplayGuard::new(WINDOW, 10);
        assert_eq!(
            guard.check(NOW, 0, NOW - 301, &sig(1)),
            Err(SigError::Stale)
        );
        assert_eq!(
            guard.check(NOW, 0, NOW + 301, &sig(2)),
            Err(SigError::Stale)
        );
        assert_eq!(guard.check(NOW, 0, i64::MIN, &sig(3)), Err(SigError::Stale));
        assert_eq!(guard.check(NOW, 0, i64::MAX, &sig(4)), Err(SigError::Stale));
        assert!(guard.is_empty(), "stale requests are not remembered");
        assert_eq!(guard.check(NOW, 0, NOW - 300, &sig(5)), Ok(()));
        assert_eq!(guard.check(NOW, 0, NOW + 300, &sig(6)), Ok(()));
    }

    #[test]
    fn replay_guard_is_busy_at_capacity() {
        let mut guard = ReplayGuard::new(WINDOW, 2);
        assert_eq!(guard.check(NOW, 0, NOW, &sig(1)), Ok(()));
        assert_eq!(guard.check(NOW, 0, NOW, &sig(2)), Ok(()));
        assert_eq!(guard.check(NOW, 0, NOW, &sig(3)), Err(SigError::Busy));
        assert_eq!(guard.check(NOW, 0, NOW, &sig(1)), Err(SigError::Replayed));
        assert_eq!(guard.len(), 2);
        assert_eq!(
            ReplayGuard::new(WINDOW, 0).check(NOW, 0, NOW, &sig(1)),
            Err(SigError::Busy)
        );
    }

    #[test]
    fn replay_guard_forgets_expired_signatures_and_frees_capacity() {
        let mut guard = ReplayGuard::new(Duration::from_secs(10), 2);
        assert_eq!(guard.check(100, 0, 100, &sig(1)), Ok(())); // remembered until 110
        assert_eq!(guard.check(105, 0, 105, &sig(2)), Ok(())); // remembered until 115
        assert_eq!(guard.check(106, 0, 106, &sig(3)), Err(SigError::Busy));
        // At 110 the first is still within its window: still full.
        assert_eq!(guard.check(110, 0, 106, &sig(3)), Err(SigError::Busy));
        assert_eq!(guard.check(110, 0, 100, &sig(1)), Err(SigError::Replayed));
        // At 111 the first has expired: forgotten, room for one more.
        assert_eq!(guard.check(111, 0, 106, &sig(3)), Ok(()));
        assert_eq!(guard.len(), 2);
        // The forgotten signature is refused by its timestamp, no longer by memory.
        assert_eq!(guard.check(111, 0, 100, &sig(1)), Err(SigError::Stale));
        assert_eq!(guard.check(111, 0, 105, &sig(2)), Err(SigError::Replayed));
        // Long after, everything expires.
        assert_eq!(guard.check(1000, 0, 1000, &sig(4)), Ok(()));
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn replay_guard_never_readmits_a_forgotten_signature_when_the_clock_goes_back() {
        let mut guard = ReplayGuard::new(Duration::from_secs(10), 10);
        assert_eq!(guard.check(100, 0, 100, &sig(1)), Ok(()));
        assert_eq!(guard.check(111, 0, 111, &sig(2)), Ok(())); // forgets sig(1)
        assert_eq!(guard.len(), 1);
        // The clock steps back to 105, where timestamp 100 would look fresh.
        assert_eq!(guard.check(105, 0, 100, &sig(1)), Err(SigError::Stale));
        // Timestamps still fresh at the latest clock reading are accepted.
        assert_eq!(guard.check(105, 0, 104, &sig(3)), Ok(()));
    }

    #[test]
    fn replay_guard_purges_many_entries() {
        let mut guard = ReplayGuard::new(Duration::from_secs(10), 100_000);
        for i in 0..100_000u32 {
            let mut s = [0u8; 64];
            s[..4].copy_from_slice(&i.to_le_bytes());
            let t = NOW + i64::from(i / 10_000);
            assert_eq!(guard.check(t, 0, t, &s), Ok(()));
        }
        assert_eq!(guard.len(), 100_000);
        assert_eq!(guard.check(NOW + 100, 0, NOW + 100, &sig(255)), Ok(()));
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn replay_guard_keeps_each_publishers_room_its_own() {
        // Capacity 4, two publishers with a quota of 2 each.
        let mut guard = ReplayGuard::new(Duration::from_secs(10), 4).with_publisher_quota(2);
        assert_eq!(guard.check(100, 0, 100, &sig(1)), Ok(()));
        assert_eq!(guard.check(100, 0, 100, &sig(2)), Ok(()));
        // Publisher 0 is at its quota: only it is refused.
        assert_eq!(
            guard.check(100, 0, 100, &sig(3)),
            Err(SigError::PublisherBusy)
        );
        assert_eq!(guard.check(100, 1, 100, &sig(4)), Ok(()));
        assert_eq!(guard.check(100, 1, 100, &sig(5)), Ok(()));
        assert_eq!((guard.len_of(0), guard.len_of(1), guard.len()), (2, 2, 4));
        // A replay is a replay whoever sends it, and is told so before any quota.
        assert_eq!(guard.check(100, 1, 100, &sig(1)), Err(SigError::Replayed));
        // Expiry gives the publisher its room back.
        assert_eq!(guard.check(111, 0, 111, &sig(3)), Ok(()));
        assert_eq!((guard.len_of(0), guard.len_of(1)), (1, 0));
        assert_eq!(
            format!("{guard:?}"),
            "ReplayGuard { window_seconds: 10, capacity: 4, quota: 2, remembered: 1, .. }"
        );
    }

    #[test]
    fn replay_guard_debug_shows_no_signature() {
        let mut guard = ReplayGuard::new(WINDOW, 10);
        guard.check(NOW, 0, NOW, &sig(0xab)).unwrap();
        let debug = format!("{guard:?}");
        assert!(debug.contains("remembered: 1"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
    }
}
