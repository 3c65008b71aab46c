//! `[cluster]` (cluster mode on Redis, see the `tslm-cluster` crate): raw from TOML, validated
//! into [`tslm_cluster::ClusterConfig`] before anything binds. The password is read from a file
//! (never from the configuration itself) and never logged.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tslm_cluster::{ClusterConfig, Fence, SentinelConfig};

pub const DEFAULT_PREFIX: &str = "tslm";
pub const DEFAULT_COMMAND_TIMEOUT_MS: u64 = 2000;
pub const DEFAULT_SYNC_INTERVAL_SECONDS: u64 = 15;
pub const DEFAULT_PROBE_INTERVAL_MS: u64 = 1000;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    redis: Option<OneOrMany>,
    redis_cluster: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    tls_ca_file: Option<PathBuf>,
    prefix: Option<String>,
    fence: Option<String>,
    command_timeout_ms: Option<u64>,
    sync_interval_seconds: Option<u64>,
    probe_interval_ms: Option<u64>,
    username: Option<String>,
    password_file: Option<PathBuf>,
}

impl RawCluster {
    pub(crate) fn validate(self) -> Result<ClusterConfig, String> {
        let at = |key: &str, m: String| format!("table [cluster], key `{key}`: {m}");
        let url_ok = |u: &str| {
            ["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| u.starts_with(s))
        };
        let redis_cluster = match self.redis_cluster {
            None => Vec::new(),
            Some(_) if self.redis.is_some() || self.sentinels.is_some() => {
                return Err(at(
                    "redis_cluster",
                    "give one of `redis`, `sentinels` or `redis_cluster`, not several".into(),
                ));
            }
            Some(_) if self.sentinel_master.is_some() => {
                return Err(at(
                    "sentinel_master",
                    "only with `sentinels`, not with `redis_cluster`".into(),
                ));
            }
            Some(seeds) => {
                if seeds.is_empty() {
                    return Err(at(
                        "redis_cluster",
                        "the list is empty: give the URL of one or more of the cluster's nodes"
                            .into(),
                    ));
                }
                for u in &seeds {
                    if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                        return Err(at(
                            "redis_cluster",
                            format!("`{u}`: each URL starts with redis:// or rediss://"),
                        ));
                    }
                    if u.contains('@') {
                        return Err(at(
                            "redis_cluster",
                            "put no credentials in a URL: use `username` and `password_file`"
                                .into(),
                        ));
                    }
                }
                let mut seen = seeds.clone();
                seen.sort();
                seen.dedup();
                if seen.len() != seeds.len() {
                    return Err(at("redis_cluster", "a URL is listed twice".into()));
                }
                seeds
            }
        };
        let sentinel = match (self.sentinels, self.sentinel_master) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(at(
                    "sentinel_master",
                    "missing: the name of the master the sentinels watch".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(at("sentinels", "missing: the sentinels' URLs".into()));
            }
            (Some(sentinels), Some(master)) => {
                if sentinels.is_empty() || sentinels.iter().any(|u| !url_ok(u)) {
                    return Err(at(
                        "sentinels",
                        "one or more URLs, each starting with redis://".into(),
                    ));
                }
                if master.is_empty() {
                    return Err(at("sentinel_master", "must not be empty".into()));
                }
                Some(SentinelConfig { sentinels, master })
            }
        };
        let redis = match (self.redis, &sentinel) {
            (None, None) if !redis_cluster.is_empty() => Vec::new(),
            (None, None) => {
                return Err(at(
                    "redis",
                    "missing: give one Redis URL or a list (or `sentinels`, or `redis_cluster`)"
                        .into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(at(
                    "redis",
                    "give either `redis` or `sentinels`, not both".into(),
                ));
            }
            (None, Some(_)) => Vec::new(),
            (Some(OneOrMany::One(u)), None) => vec![u],
            (Some(OneOrMany::Many(v)), None) => v,
        };
        if redis.is_empty() && sentinel.is_none() && redis_cluster.is_empty() {
            return Err(at("redis", "the list is empty".into()));
        }
        if redis.len() > 64 {
            return Err(at("redis", format!("{} shards; at most 64", redis.len())));
        }
        for u in redis
            .iter()
            .chain(sentinel.iter().flat_map(|s| &s.sentinels))
        {
            if !url_ok(u) {
                return Err(at(
                    "redis",
                    format!("`{u}`: each URL starts with redis://, rediss:// or unix://"),
                ));
            }
            if u.contains('@') {
                return Err(at(
                    "redis",
                    "put no credentials in a URL: use `username` and `password_file`".into(),
                ));
            }
        }
        let mut seen = redis.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != redis.len() {
            return Err(at("redis", "a URL is listed twice".into()));
        }
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
        {
            return Err(at("prefix", "1 to 64 of A-Z a-z 0-9 . _ - :".into()));
        }
        let fence = match self.fence.as_deref().unwrap_or("run_id") {
            "run_id" => Fence::RunId,
            "none" => Fence::None,
            other => {
                return Err(at(
                    "fence",
                    format!("`{other}`: \"run_id\" (the default) or \"none\""),
                ));
            }
        };
        let ranged = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(at(key, format!("{v} is out of range {lo}..={hi}")))
            }
        };
        let timeout = ranged(
            "command_timeout_ms",
            self.command_timeout_ms
                .unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS),
            50,
            60_000,
        )?;
        let sync = ranged(
            "sync_interval_seconds",
            self.sync_interval_seconds
                .unwrap_or(DEFAULT_SYNC_INTERVAL_SECONDS),
            1,
            3600,
        )?;
        let probe = ranged(
            "probe_interval_ms",
            self.probe_interval_ms.unwrap_or(DEFAULT_PROBE_INTERVAL_MS),
            100,
            60_000,
        )?;
        let password = match self.password_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| at("password_file", format!("{}: {e}", path.display())))?;
                let p = text.trim_end_matches(['\r', '\n']).to_owned();
                if p.is_empty() {
                    return Err(at("password_file", format!("{} is empty", path.display())));
                }
                Some(p)
            }
        };
        let tls_ca = match self.tls_ca_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read(&path)
                    .map_err(|e| at("tls_ca_file", format!("{}: {e}", path.display())))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(at(
                        "tls_ca_file",
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
                Some(pem)
            }
        };
        if sentinel.is_some() && tls_ca.is_some() {
            return Err(at(
                "tls_ca_file",
                "TLS to the master a Sentinel names is not supported yet; use `redis` URLs with `rediss://`".into(),
            ));
        }
        Ok(ClusterConfig {
            redis,
            sentinel,
            redis_cluster,
            tls_ca,
            prefix,
            fence,
            command_timeout: Duration::from_millis(timeout),
            sync_interval: Duration::from_secs(sync),
            probe_interval: Duration::from_millis(probe),
            username: self.username,
            password,
        })
    }
}
