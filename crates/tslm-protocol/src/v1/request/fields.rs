//! The fields of a request: start positions, channel options, ids, limits, offsets, names; each
//! parsed from its raw JSON with a precise error, and written back (`start_json`,
//! `options_json`) for clients.
#![warn(clippy::arithmetic_side_effects)]

use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;

pub(super) fn no_id(error: ProtoError) -> RequestError {
    RequestError { id: None, error }
}

/// The first byte of a raw value: `"` for strings, `{` for objects (serde would also read a
/// struct from an array, so shapes are checked before deserialising).
pub(super) fn first_byte(v: &RawValue) -> Option<u8> {
    v.get().as_bytes().first().copied()
}

pub(super) fn parse_string(v: &RawValue) -> Option<String> {
    if first_byte(v) != Some(b'"') {
        return None;
    }
    serde_json::from_str(v.get()).ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStart<'a> {
    #[serde(default)]
    last: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
}

pub(super) fn parse_start(v: Option<&RawValue>, default: Start) -> Result<Start, ProtoError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let start = match first_byte(v) {
        Some(b'"') => match parse_string(v).as_deref() {
            Some("new") => Some(Start::New),
            Some("oldest") => Some(Start::Oldest),
            _ => None,
        },
        Some(b'{') => match serde_json::from_str::<RawStart<'_>>(v.get()) {
            Ok(RawStart {
                last: Some(n),
                epoch: None,
                offset: None,
            }) if n >= 1 => Some(Start::Last(n)),
            Ok(RawStart {
                last: None,
                epoch: Some(epoch),
                offset: Some(offset),
            }) => Epoch::parse(&epoch).map(|epoch| Start::After {
                epoch,
                offset: Offset(offset),
            }),
            _ => None,
        },
        _ => None,
    };
    start.ok_or_else(|| ProtoError::bad_request(START_FORMS))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOptions<'a> {
    // Kept as their JSON text, so that a key given with `null` is seen (and refused, not read as
    // "not given") and numbers are read exactly, never through a float.
    #[serde(default, borrow, deserialize_with = "present")]
    backlog_messages: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    backlog_seconds: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    max_message_bytes: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    max_subscribers: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    replies: Option<&'a RawValue>,
}

/// An option that is present, with its JSON text (`null` included).
pub(super) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The value of a JSON number that is a non-negative integer as JSON Schema counts them: an
/// integral number in any notation (`5`, `5.0`, `5e0`, `50e-1`), at most `u64::MAX`. Read from
/// the text exactly (a float would round `2111599191287955.0` off). `None` for anything else:
/// fractions, negative numbers, numbers past `u64::MAX`, non-numbers.
pub(crate) fn integral(text: &str) -> Option<u64> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0); // zero, whatever its sign and exponent
    }
    if negative {
        return None;
    }
    let exp: i64 = match exp {
        None => 0,
        Some(e) => e.strip_prefix('+').unwrap_or(e).parse().ok()?,
    };
    let significant = digits.trim_end_matches('0');
    let zeros = i64::try_from(digits.len().saturating_sub(significant.len())).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    let scale = exp.checked_add(zeros)?.checked_sub(frac_len)?;
    if scale < 0 || i64::try_from(significant.len()).ok()?.checked_add(scale)? > 20 {
        return None;
    }
    let mut n: u64 = significant.parse().ok()?;
    for _ in 0..scale {
        n = n.checked_mul(10)?;
    }
    Some(n)
}

/// Decodes channel options on their own (the JSON body of `PUT /v1/channels/{name}`).
pub fn decode_options(json: &[u8]) -> Result<ChannelOptions, ProtoError> {
    let text =
        std::str::from_utf8(json).map_err(|_| ProtoError::bad_request("the body is not UTF-8"))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|_| ProtoError::bad_request("the body is not one valid JSON value"))?;
    parse_options(Some(raw))
}

pub(super) fn parse_options(v: Option<&RawValue>) -> Result<ChannelOptions, ProtoError> {
    let Some(v) = v else {
        return Ok(ChannelOptions::default());
    };
    if first_byte(v) != Some(b'{') {
        return Err(ProtoError::bad_request(OPTIONS_FORM));
    }
    let o: RawOptions =
        serde_json::from_str(v.get()).map_err(|_| ProtoError::bad_request(OPTIONS_FORM))?;
    let bad = || ProtoError::bad_request(OPTIONS_FORM);
    let n = |v: Option<&RawValue>| v.map(|v| integral(v.get()).ok_or_else(bad)).transpose();
    let replies = match o.replies.map(RawValue::get) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(bad()),
    };
    Ok(ChannelOptions {
        backlog_messages: n(o.backlog_messages)?,
        backlog_seconds: n(o.backlog_seconds)?,
        max_message_bytes: n(o.max_message_bytes)?,
        max_subscribers: n(o.max_subscribers)?,
        replies,
    })
}

pub(super) fn parse_msg_id(v: Option<&RawValue>) -> Result<Option<Box<str>>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    match parse_string(v) {
        Some(s) if (1..=MAX_MSG_ID_BYTES).contains(&s.len()) => Ok(Some(s.into_boxed_str())),
        _ => Err(ProtoError::bad_request(format!(
            "`msg_id` must be a string of 1 to {MAX_MSG_ID_BYTES} bytes"
        ))),
    }
}

pub(super) fn parse_limit(v: Option<&RawValue>) -> Result<usize, ProtoError> {
    let Some(v) = v else {
        return Ok(DEFAULT_LIMIT);
    };
    serde_json::from_str::<u64>(v.get())
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ProtoError::bad_request(format!("`limit` must be an integer from 1 to {MAX_LIMIT}"))
        })
}

pub(super) fn parse_reply_offset(v: Option<&RawValue>) -> Result<Offset, ProtoError> {
    let Some(v) = v else {
        return Err(ProtoError::bad_request("`reply` needs an `offset`"));
    };
    serde_json::from_str::<u64>(v.get())
        .ok()
        .filter(|&n| n >= 1)
        .map(Offset)
        .ok_or_else(|| ProtoError::bad_request("`offset` must be an integer >= 1"))
}

pub(super) fn parse_prefix(v: Option<&RawValue>) -> Result<Option<String>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    match parse_string(v) {
        Some(s) if s.len() <= MAX_PREFIX_BYTES => Ok(Some(s)),
        _ => Err(ProtoError::bad_request(format!(
            "`prefix` must be a string of at most {MAX_PREFIX_BYTES} bytes"
        ))),
    }
}

pub(super) fn parse_after(v: Option<&RawValue>) -> Result<Option<ChannelName>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let Some(s) = parse_string(v) else {
        return Err(ProtoError::bad_request("`after` must be a channel name"));
    };
    ChannelName::new(&s)
        .map(Some)
        .map_err(|e| ProtoError::bad_request(format!("`after` must be a channel name: {e}")))
}

/// The JSON text of a `start` field (client side): `"new"`, `"oldest"`, `{"last":N}` or
/// `{"epoch":"…","offset":N}`.
pub fn start_json(start: Start) -> String {
    match start {
        Start::New => "\"new\"".to_owned(),
        Start::Oldest => "\"oldest\"".to_owned(),
        Start::Last(n) => {
            let mut out = String::from("{\"last\":");
            super::super::push_u64(&mut out, n);
            out.push('}');
            out
        }
        Start::After { epoch, offset } => {
            let mut out = String::from("{\"epoch\":");
            super::super::push_epoch(&mut out, epoch);
            out.push_str(",\"offset\":");
            super::super::push_u64(&mut out, offset.0);
            out.push('}');
            out
        }
    }
}

/// The JSON text of an `options` object (client side), with only the options that are set.
pub fn options_json(options: &ChannelOptions) -> String {
    let mut out = String::from("{");
    let numbers = [
        ("backlog_messages", options.backlog_messages),
        ("backlog_seconds", options.backlog_seconds),
        ("max_message_bytes", options.max_message_bytes),
        ("max_subscribers", options.max_subscribers),
    ];
    for (key, value) in numbers {
        if let Some(n) = value {
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            super::super::push_u64(&mut out, n);
        }
    }
    if let Some(r) = options.replies {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(if r {
            "\"replies\":true"
        } else {
            "\"replies\":false"
        });
    }
    out.push('}');
    out
}
