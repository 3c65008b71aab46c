// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use bytes::Bytes;

/// How the original protocol labels a payload; v1 publishes map a JSON string to `Text` and any
/// other value to `Json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Text,
    Json,
}

/// A published message body: one complete JSON value exactly as the publisher wrote it (validated,
/// never re-serialised), plus its original-protocol label. Cloning shares the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    json: Bytes,
    kind: PayloadKind,
}

impl Payload {
    /// Wraps bytes already known to hold exactly one valid JSON value, with no surrounding
    /// whitespace. `kind` is derived from the value unless the legacy dialect said otherwise.
    pub(crate) fn from_validated(json: Bytes, kind: Option<PayloadKind>) -> Self {
        let kind = kind.unwrap_or(if json.first() == Some(&b'"') {
            PayloadKind::Text
        } else {
            PayloadKind::Json
        });
        Self { json, kind }
    }

    /// Validates `json` as one JSON value (surrounding whitespace is trimmed off) and wraps it,
    /// sharing `json`'s storage.
    pub fn from_json_bytes(json: Bytes) -> Result<Self, serde_json::Error> {
        let raw: &serde_json::value::RawValue = serde_json::from_slice(&json)?;
        let range = subslice_range(&json, raw.get().as_bytes());
        Ok(Self::from_validated(json.slice(range), None))
    }

    /// A JSON string payload holding `text`.
    pub fn text(text: &str) -> Self {
        let quoted = serde_json::Value::String(text.to_owned()).to_string();
        Self::from_validated(Bytes::from(quoted), Some(PayloadKind::Text))
    }

    /// The same value held in other storage (`json` must hold exactly this payload's bytes, e.g.
    /// the slice of a frame it was copied into); when it does not, `self` is returned unchanged.
    pub fn rebased(&self, json: Bytes) -> Self {
        if json == self.json {
            Self {
                json,
                kind: self.kind,
            }
        } else {
            self.clone()
        }
    }

    /// The JSON value, as written by the publisher.
    pub fn json(&self) -> &Bytes {
        &self.json
    }

    pub fn kind(&self) -> PayloadKind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.json.len()
    }

    pub fn is_empty(&self) -> bool {
        self.json.is_empty()
    }
}

/// The byte range of `inner` within `outer`; `inner` must be a subslice of `outer` (it is, for a
/// borrowed `RawValue` parsed from `outer`).
pub(crate) fn subslice_range(outer: &[u8], inner: &[u8]) -> std::ops::Range<usize> {
    let start = (inner.as_ptr() as usize).saturating_sub(outer.as_ptr() as usize);
    let start = start.min(outer.len());
    let end = start.saturating_add(inner.len()).min(outer.len());
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_publishers_bytes() {
        let p =
            Payload::from_json_bytes(Bytes::from_static(b"  {\"a\": 1,  \"b\":[ 2 ]}\n")).unwrap();
        assert_eq!(&p.json()[..], b"{\"a\": 1,  \"b\":[ 2 ]}");
        assert_eq!(p.kind(), PayloadKind::Json);
        let s = Payload::from_json_bytes(Bytes::from_static(b"\"hi\"")).unwrap();
        assert_eq!(s.kind(), PayloadKind::Text);
        assert!(Payload::from_json_bytes(Bytes::from_static(b"{\"a\":")).is_err());
        assert!(Payload::from_json_bytes(Bytes::from_static(b"1 2")).is_err());
        assert!(Payload::from_json_bytes(Bytes::from_static(b"")).is_err());
    }

    #[test]
    fn text_escapes() {
        let p = Payload::text("a\"b\n");
        assert_eq!(&p.json()[..], br#""a\"b\n""#);
    }
}
