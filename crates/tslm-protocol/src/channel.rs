// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::Arc;

/// The longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 255;

/// A validated channel name: 1 to 255 bytes of `A-Z a-z 0-9 . _ - : ~`, not made of dots only.
///
/// Every character is unreserved or a path character in URLs (RFC 3986), needs no escaping in JSON
/// and cannot forge log lines, so a name can be embedded in a URL path, a log field or a JSON string
/// as is. Names of dots only (`.`, `..`) are refused because URL normalisation rewrites them.
/// Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

/// Why a string is not a channel name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_BYTES} bytes")]
    TooLong,
    #[error("channel name may only contain A-Z a-z 0-9 . _ - : ~")]
    BadChar,
    #[error("channel name may not consist of dots only")]
    DotsOnly,
}

impl ChannelName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        Self::validate(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// Checks `name` without allocating.
    pub fn validate(name: &str) -> Result<(), ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_NAME_BYTES {
            return Err(ChannelNameError::TooLong);
        }
        if !name.bytes().all(is_name_byte) {
            return Err(ChannelNameError::BadChar);
        }
        if name.bytes().all(|b| b == b'.') {
            return Err(ChannelNameError::DotsOnly);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'~')
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::str::FromStr for ChannelName {
    type Err = ChannelNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl std::ops::Deref for ChannelName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charset() {
        for ok in [
            "news",
            "prices.BTC-USD",
            "a",
            "x:y~z_1",
            "..a",
            &"n".repeat(255),
        ] {
            assert!(ChannelName::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::new(&"n".repeat(256)),
            Err(ChannelNameError::TooLong)
        );
        for bad in [
            "a b", "a/b", "é", "a\nb", "a\"b", "a*", "a?b", "a%20", "a#", "<x>",
        ] {
            assert_eq!(
                ChannelName::new(bad),
                Err(ChannelNameError::BadChar),
                "{bad:?}"
            );
        }
        assert_eq!(ChannelName::new("."), Err(ChannelNameError::DotsOnly));
        assert_eq!(ChannelName::new(".."), Err(ChannelNameError::DotsOnly));
    }
}
