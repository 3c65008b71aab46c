//! `[audit]` (the audit log, see `crate::audit`): raw from TOML, validated into [`AuditConfig`] before anything binds.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The default of `queue_records`: records waiting for the writer at most.
pub const DEFAULT_QUEUE_RECORDS: usize = 65_536;
/// The default of `sync_interval_ms`.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 1000;

/// When the writer asks the system to put records on disk (`fdatasync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// Never: records reach the system's page cache after every batch, and disk when the system
    /// decides (they survive a crash of the gateway, not of the machine).
    None,
    /// At most this long after a batch is written (the default, every second).
    Interval(Duration),
    /// After every batch the writer writes.
    Every,
}

/// The validated `[audit]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The JSON-lines file records are appended to (created when missing).
    pub file: PathBuf,
    pub sync: SyncPolicy,
    /// Records queued for the writer at most; past it, writes are refused (`unavailable`) and
    /// authentication records counted as dropped.
    pub queue_records: NonZeroUsize,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawSync {
    None,
    Interval,
    Every,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    file: Option<PathBuf>,
    sync: Option<RawSync>,
    sync_interval_ms: Option<u64>,
    queue_records: Option<u64>,
}

impl RawAudit {
    pub(crate) fn validate(self) -> Result<AuditConfig, String> {
        let at = |key: &str, m: String| format!("table [audit], key `{key}`: {m}");
        let file = self.file.ok_or_else(|| {
            at(
                "file",
                "missing: give the path of the audit log, or remove [audit]".into(),
            )
        })?;
        if file.as_os_str().is_empty() {
            return Err(at("file", "must not be empty".into()));
        }
        let sync = match self.sync.unwrap_or(RawSync::Interval) {
            RawSync::Interval => {
                let ms = self.sync_interval_ms.unwrap_or(DEFAULT_SYNC_INTERVAL_MS);
                if !(10..=60_000).contains(&ms) {
                    return Err(at(
                        "sync_interval_ms",
                        format!("{ms} is out of range 10..=60000"),
                    ));
                }
                SyncPolicy::Interval(Duration::from_millis(ms))
            }
            other => {
                if self.sync_interval_ms.is_some() {
                    return Err(at(
                        "sync_interval_ms",
                        "only applies with sync = \"interval\"".into(),
                    ));
                }
                if matches!(other, RawSync::Every) {
                    SyncPolicy::Every
                } else {
                    SyncPolicy::None
                }
            }
        };
        let queue = self.queue_records.unwrap_or(DEFAULT_QUEUE_RECORDS as u64);
        let queue_records = usize::try_from(queue)
            .ok()
            .filter(|q| (16..=16_777_216).contains(q))
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| {
                at(
                    "queue_records",
                    format!("{queue} is out of range 16..=16777216"),
                )
            })?;
        Ok(AuditConfig {
            file,
            sync,
            queue_records,
        })
    }
}
