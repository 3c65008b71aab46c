//! Channel classes: what a channel keeps, how it treats slow subscribers and which listeners may
//! use it, chosen by the channel's name from the `[channel.PATTERN]` tables of the configuration.
//! See docs/configuration.md, "Channel classes".
//!
//! Everything is resolved when the configuration is loaded: inheritance from the `"*"` class,
//! validation, and the precedence order of wildcard patterns. [`ChannelClasses::class_for`] is a
//! hash lookup for names configured exactly, then a walk over the wildcard patterns in precedence
//! order.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Deserialize;
use tslm_hub::settings::defaults;
use tslm_hub::{ChannelSettings, SlowPolicy};
use tslm_protocol::{ChannelName, ChannelOptions, MAX_CHANNEL_NAME_BYTES};

/// The pattern of the default class, which every other class inherits from.
pub const DEFAULT_PATTERN: &str = "*";

/// Limits on class keys (documented in docs/configuration.md).
pub mod limits {
    pub const MAX_BACKLOG_MESSAGES: u64 = 1_000_000;
    /// One year.
    pub const MAX_BACKLOG_SECONDS: u64 = 31_536_000;
    pub const MAX_MESSAGE_BYTES: u64 = 16 * 1024 * 1024;
    pub const MAX_REPLY_WINDOW: u64 = 1_000_000;
    pub const MAX_REPLY_BYTES: u64 = 1024 * 1024;
    pub const MAX_DEDUPE_SECONDS: u64 = 86_400;
    pub const MAX_DEDUPE_IDS: u64 = 1_000_000;
}

/// The resolved settings of one channel class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelClass {
    /// The pattern as configured (`"*"` for the default class, also the built-in one).
    pub pattern: String,
    /// The settings a channel of this class is created with when `create` carries no options.
    pub settings: ChannelSettings,
    /// Whether the first publish to a missing channel creates it (otherwise only `create` does).
    pub auto_create: bool,
    /// Listeners whose connections may subscribe and read history (`None`: any listener whose
    /// permissions allow it).
    pub subscribe_from: Option<Vec<String>>,
    /// Listeners whose connections may create, publish and delete (`None`: any listener whose
    /// permissions allow it).
    pub publish_from: Option<Vec<String>>,
    /// Replies one subscriber connection may send per second.
    pub replies_per_second: u32,
    /// Subscribers must present a token from a configured issuer that grants the channel
    /// (`subscribers = "authenticated"`); otherwise anyone the listener lets in may subscribe.
    pub authenticated_subscribers: bool,
}

impl Default for ChannelClass {
    /// The built-in default class.
    fn default() -> Self {
        Self {
            pattern: DEFAULT_PATTERN.to_owned(),
            settings: ChannelSettings::default(),
            auto_create: false,
            subscribe_from: None,
            publish_from: None,
            replies_per_second: defaults::REPLIES_PER_SECOND,
            authenticated_subscribers: false,
        }
    }
}

impl ChannelClass {
    /// May a connection of listener `listener` subscribe / read history here?
    pub fn may_subscribe_from(&self, listener: &str) -> bool {
        allowed(self.subscribe_from.as_deref(), listener)
    }

    /// May it create / publish / delete here?
    pub fn may_publish_from(&self, listener: &str) -> bool {
        allowed(self.publish_from.as_deref(), listener)
    }

    /// The settings for a channel created with `options`. Each option may only lower the class's
    /// value (`backlog_messages`, `backlog_seconds`, `max_message_bytes`, `max_subscribers`) or
    /// turn replies off; asking for more, for replies where the class has none, or for 0 where 0
    /// makes no sense is an error naming the option and the class's limit.
    pub fn settings_with(&self, options: &ChannelOptions) -> Result<ChannelSettings, String> {
        let mut s = self.settings.clone();
        if let Some(v) = options.backlog_messages {
            s.backlog_messages =
                usize_of(self.lower("backlog_messages", v, 0, s.backlog_messages as u64)?);
            // What is replayed comes from the backlog, so it cannot be longer.
            s.legacy_replay = s.legacy_replay.min(s.backlog_messages);
        }
        if let Some(v) = options.backlog_seconds {
            s.backlog_age = Duration::from_secs(self.lower(
                "backlog_seconds",
                v,
                1,
                s.backlog_age.as_secs(),
            )?);
        }
        if let Some(v) = options.max_message_bytes {
            s.max_message_bytes =
                usize_of(self.lower("max_message_bytes", v, 1, s.max_message_bytes as u64)?);
        }
        if let Some(v) = options.max_subscribers {
            let limit = s.max_subscribers.map_or(u64::MAX, |m| m as u64);
            s.max_subscribers = Some(usize_of(self.lower("max_subscribers", v, 1, limit)?));
        }
        match options.replies {
            Some(true) if !s.replies => {
                return Err(format!(
                    "option `replies` = true is more than channel class {:?} allows (replies are off)",
                    self.pattern
                ));
            }
            Some(r) => s.replies = r,
            None => {}
        }
        Ok(s)
    }

    fn lower(&self, option: &str, v: u64, min: u64, limit: u64) -> Result<u64, String> {
        if v < min {
            return Err(format!(
                "option `{option}` = {v} is less than {min}, the least allowed"
            ));
        }
        if v > limit {
            return Err(format!(
                "option `{option}` = {v} is more than channel class {:?} allows ({limit})",
                self.pattern
            ));
        }
        Ok(v)
    }
}

fn allowed(list: Option<&[String]>, listener: &str) -> bool {
    list.is_none_or(|l| l.iter().any(|n| n == listener))
}

/// All channel classes of a configuration, ready for lookups by channel name.
#[derive(Debug, Clone)]
pub struct ChannelClasses {
    /// Classes whose pattern has no `*`, by that name.
    exact: HashMap<Box<str>, ChannelClass>,
    /// Classes with a `*` other than `"*"`, in precedence order: most literal characters first,
    /// then by pattern text.
    wildcard: Vec<(Glob, ChannelClass)>,
    /// The `"*"` class if configured, else the built-in default.
    default: ChannelClass,
}

impl Default for ChannelClasses {
    /// The built-in default class only.
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            default: ChannelClass::default(),
        }
    }
}

impl ChannelClasses {
    /// The class of channel `name`: the matching class whose pattern has the most literal
    /// (non-`*`) characters, ties going to the pattern that sorts first; else the default class.
    pub fn class_for(&self, name: &ChannelName) -> &ChannelClass {
        self.class_for_str(name.as_str())
    }

    /// [`Self::class_for`] on a name not (yet) validated as a [`ChannelName`].
    pub fn class_for_str(&self, name: &str) -> &ChannelClass {
        if let Some(c) = self.exact.get(name) {
            return c;
        }
        self.wildcard
            .iter()
            .find(|(g, _)| g.matches(name))
            .map_or(&self.default, |(_, c)| c)
    }

    /// The `"*"` class if configured, else the built-in default.
    pub fn default_class(&self) -> &ChannelClass {
        &self.default
    }

    /// Every class: exact names in name order, then wildcard patterns in precedence order, then
    /// the default class.
    pub fn iter(&self) -> impl Iterator<Item = &ChannelClass> {
        let mut exact: Vec<&ChannelClass> = self.exact.values().collect();
        exact.sort_by(|a, b| a.pattern.cmp(&b.pattern));
        exact
            .into_iter()
            .chain(self.wildcard.iter().map(|(_, c)| c))
            .chain(std::iter::once(&self.default))
    }

    /// Validates the `[channel.PATTERN]` tables; `listeners` are the configured listener names.
    pub(crate) fn from_raw(
        raw: BTreeMap<String, RawChannelClass>,
        listeners: &[&str],
    ) -> Result<Self, String> {
        for pattern in raw.keys() {
            validate_pattern(pattern)?;
        }
        let builtin = ChannelClass::default();
        let default = match raw.get(DEFAULT_PATTERN) {
            Some(r) => resolve(DEFAULT_PATTERN, r, &builtin, None, listeners)?,
            None => builtin,
        };
        let star = raw.get(DEFAULT_PATTERN);
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for (pattern, r) in &raw {
            if pattern == DEFAULT_PATTERN {
                continue;
            }
            let class = resolve(pattern, r, &default, star, listeners)?;
            if pattern.contains('*') {
                wildcard.push((Glob::new(pattern), class));
            } else {
                exact.insert(pattern.as_str().into(), class);
            }
        }
        wildcard.sort_by(|(a, ca), (b, cb)| {
            b.literal_len
                .cmp(&a.literal_len)
                .then_with(|| ca.pattern.cmp(&cb.pattern))
        });
        Ok(Self {
            exact,
            wildcard,
            default,
        })
    }
}

/// A channel pattern split at its `*`s (each matches any run of characters, dots included); a
/// pattern without `*` matches exactly one name. Used by channel classes and by the channel
/// lists of publishers and tokens.
#[derive(Debug, Clone)]
pub struct Glob {
    /// The text before the first `*`, between `*`s, and after the last (at least two parts).
    parts: Vec<Box<str>>,
    literal_len: usize,
}

impl Glob {
    /// Validates and compiles a pattern: 1..=255 characters from the channel alphabet plus `*`.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() || pattern.len() > tslm_protocol::MAX_CHANNEL_NAME_BYTES {
            return Err(format!(
                "{pattern:?}: a channel pattern has 1 to {} characters",
                tslm_protocol::MAX_CHANNEL_NAME_BYTES
            ));
        }
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"._:~-*".contains(&b);
        if !pattern.bytes().all(ok) {
            return Err(format!(
                "{pattern:?}: a channel pattern may only contain A-Z a-z 0-9 . _ - : ~ and *"
            ));
        }
        Ok(Self::new(pattern))
    }

    fn new(pattern: &str) -> Self {
        Self {
            parts: pattern.split('*').map(Box::from).collect(),
            literal_len: pattern.bytes().filter(|&b| b != b'*').count(),
        }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> String {
        self.parts.join("*")
    }

    pub fn matches(&self, name: &str) -> bool {
        if name.len() < self.literal_len {
            return false;
        }
        let Some((first, rest)) = self.parts.split_first() else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return name == &**first;
        };
        let Some(s) = name.strip_prefix(&**first) else {
            return false;
        };
        let Some(mut s) = s.strip_suffix(&**last) else {
            return false;
        };
        // Each `*` matches any run, so the leftmost occurrence of each middle part is as good as
        // any other: it leaves the most text for the parts after it.
        for part in middle {
            match s.find(&**part) {
                Some(i) => s = &s[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

fn validate_pattern(pattern: &str) -> Result<(), String> {
    let fail = |m: &str| Err(format!("channel class {pattern:?}: {m}"));
    if pattern.is_empty() {
        return fail("a pattern may not be empty");
    }
    if pattern.len() > MAX_CHANNEL_NAME_BYTES {
        return fail(&format!(
            "a pattern may be at most {MAX_CHANNEL_NAME_BYTES} bytes long"
        ));
    }
    if !pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'~' | b'*'))
    {
        return fail("a pattern may only contain A-Z a-z 0-9 . _ - : ~ and the wildcard *");
    }
    if pattern != DEFAULT_PATTERN && pattern.bytes().all(|b| b == b'*') {
        return fail("a pattern of wildcards only matches every channel: write it \"*\"");
    }
    if !pattern.contains('*')
        && let Err(e) = ChannelName::validate(pattern)
    {
        return fail(&format!("not a channel name: {e}"));
    }
    Ok(())
}

/// One `[channel.PATTERN]` table as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannelClass {
    backlog_messages: Option<u64>,
    backlog_seconds: Option<u64>,
    max_message_bytes: Option<u64>,
    max_subscribers: Option<u64>,
    slow_subscriber: Option<RawSlowPolicy>,
    auto_create: Option<bool>,
    subscribers: Option<RawSubscribers>,
    subscribe_from: Option<Vec<String>>,
    publish_from: Option<Vec<String>>,
    replies: Option<bool>,
    reply_window: Option<u64>,
    max_reply_bytes: Option<u64>,
    replies_per_second: Option<u64>,
    dedupe_seconds: Option<u64>,
    dedupe_max_ids: Option<u64>,
    legacy_replay: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSubscribers {
    Anonymous,
    Authenticated,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RawSlowPolicy {
    Disconnect,
    DropOldest,
    Latest,
}

impl From<RawSlowPolicy> for SlowPolicy {
    fn from(p: RawSlowPolicy) -> Self {
        match p {
            RawSlowPolicy::Disconnect => SlowPolicy::Disconnect,
            RawSlowPolicy::DropOldest => SlowPolicy::DropOldest,
            RawSlowPolicy::Latest => SlowPolicy::Latest,
        }
    }
}

/// The class `pattern` written as `raw`, starting from `base`. `star` is the `"*"` table the base
/// came from, if any (to say where an inherited value comes from).
fn resolve(
    pattern: &str,
    raw: &RawChannelClass,
    base: &ChannelClass,
    star: Option<&RawChannelClass>,
    listeners: &[&str],
) -> Result<ChannelClass, String> {
    let mut c = base.clone();
    c.pattern = pattern.to_owned();
    // `u64::MAX` as `max`: no upper bound (values saturate where they are stored).
    let range = |key: &str, v: Option<u64>, min: u64, max: u64| -> Result<Option<u64>, String> {
        match v {
            Some(v) if v < min || v > max => {
                let upper = if max == u64::MAX {
                    String::new()
                } else {
                    format!("={max}")
                };
                Err(format!(
                    "channel class {pattern:?}, key `{key}`: {v} is out of range {min}..{upper}"
                ))
            }
            v => Ok(v),
        }
    };
    let s = &mut c.settings;
    if let Some(v) = range(
        "backlog_messages",
        raw.backlog_messages,
        0,
        limits::MAX_BACKLOG_MESSAGES,
    )? {
        s.backlog_messages = usize_of(v);
    }
    if let Some(v) = range(
        "backlog_seconds",
        raw.backlog_seconds,
        1,
        limits::MAX_BACKLOG_SECONDS,
    )? {
        s.backlog_age = Duration::from_secs(v);
    }
    if let Some(v) = range(
        "max_message_bytes",
        raw.max_message_bytes,
        1,
        limits::MAX_MESSAGE_BYTES,
    )? {
        s.max_message_bytes = usize_of(v);
    }
    if let Some(v) = range("max_subscribers", raw.max_subscribers, 1, u64::MAX)? {
        s.max_subscribers = Some(usize_of(v));
    }
    if let Some(p) = raw.slow_subscriber {
        s.slow_policy = p.into();
    }
    if let Some(r) = raw.replies {
        s.replies = r;
    }
    if let Some(v) = range(
        "reply_window",
        raw.reply_window,
        1,
        limits::MAX_REPLY_WINDOW,
    )? {
        s.reply_window = usize_of(v);
    }
    if let Some(v) = range(
        "max_reply_bytes",
        raw.max_reply_bytes,
        1,
        limits::MAX_REPLY_BYTES,
    )? {
        s.max_reply_bytes = usize_of(v);
    }
    if let Some(v) = range(
        "dedupe_seconds",
        raw.dedupe_seconds,
        0,
        limits::MAX_DEDUPE_SECONDS,
    )? {
        s.dedupe_window = Duration::from_secs(v);
    }
    if let Some(v) = range(
        "dedupe_max_ids",
        raw.dedupe_max_ids,
        0,
        limits::MAX_DEDUPE_IDS,
    )? {
        s.dedupe_max_ids = usize_of(v);
    }
    if let Some(v) = raw.legacy_replay {
        s.legacy_replay = usize_of(v);
    }
    if s.legacy_replay > s.backlog_messages {
        let inherited = match (raw.legacy_replay, star.and_then(|r| r.legacy_replay)) {
            (None, Some(_)) => format!(
                " (`legacy_replay` = {} comes from channel class \"*\"; set a smaller one here)",
                s.legacy_replay
            ),
            _ => String::new(),
        };
        return Err(format!(
            "channel class {pattern:?}, key `legacy_replay`: {} is more than the class's `backlog_messages` ({}): only messages in the backlog can be replayed{inherited}",
            s.legacy_replay, s.backlog_messages
        ));
    }
    if let Some(v) = range("replies_per_second", raw.replies_per_second, 1, u64::MAX)? {
        c.replies_per_second = u32::try_from(v).unwrap_or(u32::MAX);
    }
    if let Some(s) = raw.subscribers {
        c.authenticated_subscribers = matches!(s, RawSubscribers::Authenticated);
    }
    if let Some(a) = raw.auto_create {
        c.auto_create = a;
    }
    if let Some(l) = &raw.subscribe_from {
        c.subscribe_from = Some(listener_list(pattern, "subscribe_from", l, listeners)?);
    }
    if let Some(l) = &raw.publish_from {
        c.publish_from = Some(listener_list(pattern, "publish_from", l, listeners)?);
    }
    Ok(c)
}

fn listener_list(
    pattern: &str,
    key: &str,
    list: &[String],
    listeners: &[&str],
) -> Result<Vec<String>, String> {
    if list.is_empty() {
        return Err(format!(
            "channel class {pattern:?}, key `{key}`: an empty list would let no listener in; omit the key to allow every listener"
        ));
    }
    if let Some(unknown) = list.iter().find(|n| !listeners.contains(&n.as_str())) {
        let known: Vec<String> = listeners.iter().map(|l| format!("`{l}`")).collect();
        return Err(format!(
            "channel class {pattern:?}, key `{key}`: there is no listener `{unknown}` (listeners: {})",
            known.join(", ")
        ));
    }
    Ok(list.to_vec())
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests;
