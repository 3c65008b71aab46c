//! Positions of the HTTP transports, with no state on the gateway: a long-poll cursor names the
//! position (epoch and last offset seen) of **every** channel of a request, so that any gateway
//! can answer the next poll, and a stale or foreign cursor is refused, never taken for "new".
//!
//! Format: `C.E:O,E:O,…` where `C` is 8 hex digits, a checksum of the request's channel names
//! in order (FNV-1a, 32 bits, of the names joined by `\n`), and each `E:O` is a channel's epoch
//! (16 hex digits) and the last offset delivered, in the order the request names the channels.
//! The characters are all safe in a URL query.
//!
//! A request names its channels as `NAME` or `NAME@START`, where `START` is `new` (the default),
//! `oldest`, `last:N` or `EPOCH:OFFSET` (resume after that message).

use crate::{ChannelName, Epoch, Offset, ProtoError, Start};

/// A channel's position: the last offset the client has of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: Epoch,
    pub offset: Offset,
}

impl Position {
    /// Where a read resumes: after this position.
    pub fn start(self) -> Start {
        Start::After {
            epoch: self.epoch,
            offset: self.offset,
        }
    }
}

/// A decimal number of at most 20 ASCII digits that fits in 64 bits.
fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// FNV-1a (32 bits) of the names joined by `\n`: ties a cursor to its channel list.
fn checksum(channels: &[ChannelName]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (i, c) in channels.iter().enumerate() {
        if i > 0 {
            h = (h ^ u32::from(b'\n')).wrapping_mul(0x0100_0193);
        }
        for b in c.as_str().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The cursor of `positions`, one per channel of `channels`, in order.
pub fn encode(channels: &[ChannelName], positions: &[Position]) -> String {
    let mut out = format!("{:08x}.", checksum(channels));
    for (i, p) in positions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}:{}", p.epoch, p.offset.0));
    }
    out
}

/// Reads a cursor for `channels`: `bad_request` when it is malformed, names another channel list
/// (or another order), or has not one position per channel.
pub fn decode(channels: &[ChannelName], cursor: &str) -> Result<Vec<Position>, ProtoError> {
    let bad = |why: &str| ProtoError::bad_request(format!("`cursor`: {why}"));
    let (sum, rest) = cursor
        .split_once('.')
        .ok_or_else(|| bad("not a cursor of this gateway"))?;
    if sum.len() != 8 || u32::from_str_radix(sum, 16).ok() != Some(checksum(channels)) {
        return Err(bad(
            "it was made for other channels (send the channels of the request that returned it, in the same order)",
        ));
    }
    let positions = rest
        .split(',')
        .map(|p| {
            let (e, o) = p.split_once(':')?;
            Some(Position {
                epoch: Epoch::parse(e)?,
                offset: Offset(digits(o)?),
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("malformed position"))?;
    if positions.len() != channels.len() {
        return Err(bad("it has a position for a different number of channels"));
    }
    Ok(positions)
}

/// Reads `NAME` or `NAME@START` (see the module documentation).
pub fn parse_channel(spec: &str) -> Result<(ChannelName, Start), ProtoError> {
    let (name, start) = match spec.rsplit_once('@') {
        Some((n, s)) => (n, Some(s)),
        None => (spec, None),
    };
    let name = ChannelName::new(name)
        .map_err(|e| ProtoError::bad_request(format!("`channel` {spec:?}: {e}")))?;
    let bad = || {
        ProtoError::bad_request(format!(
            "`channel` {spec:?}: the start must be new, oldest, last:N (N >= 1) or EPOCH:OFFSET"
        ))
    };
    let start = match start {
        None | Some("new") => Start::New,
        Some("oldest") => Start::Oldest,
        Some(s) => match s.split_once(':') {
            Some(("last", n)) => match digits(n) {
                Some(n) if n >= 1 => Start::Last(n),
                _ => return Err(bad()),
            },
            Some((e, o)) => Start::After {
                epoch: Epoch::parse(e).ok_or_else(bad)?,
                offset: Offset(digits(o).ok_or_else(bad)?),
            },
            None => return Err(bad()),
        },
    };
    Ok((name, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<ChannelName> {
        list.iter().map(|n| ChannelName::new(n).unwrap()).collect()
    }

    #[test]
    fn a_cursor_round_trips_for_its_channels_only() {
        let chans = names(&["a", "b.c"]);
        let pos = [
            Position {
                epoch: Epoch(0xab),
                offset: Offset(7),
            },
            Position {
                epoch: Epoch(u64::MAX),
                offset: Offset(0),
            },
        ];
        let c = encode(&chans, &pos);
        assert_eq!(decode(&chans, &c).unwrap(), pos);
        assert!(
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:,".contains(&b))
        );
        // Another list, the same list in another order, a changed position count: refused.
        for other in [names(&["a"]), names(&["b.c", "a"]), names(&["a", "b.d"])] {
            assert_eq!(
                decode(&other, &c).unwrap_err().code,
                crate::ErrorCode::BadRequest
            );
        }
    }

    #[test]
    fn malformed_cursors_are_refused() {
        let chans = names(&["a"]);
        let sum = &encode(&chans, &[])[..8];
        for bad in [
            "",
            "x",
            "zzzzzzzz.00000000000000ab:1",
            &format!("{sum}."),
            &format!("{sum}.00000000000000ab"),
            &format!("{sum}.ab:1"),
            &format!("{sum}.00000000000000ab:-1"),
            &format!("{sum}.00000000000000ab:1e3"),
            &format!("{sum}.00000000000000ab:99999999999999999999999"),
            &format!("{sum}.00000000000000ab:1,00000000000000ab:2"),
        ] {
            assert!(decode(&chans, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn channel_specs() {
        let n = |s: &str| ChannelName::new(s).unwrap();
        assert_eq!(parse_channel("a").unwrap(), (n("a"), Start::New));
        assert_eq!(parse_channel("a:b@new").unwrap(), (n("a:b"), Start::New));
        assert_eq!(parse_channel("a@oldest").unwrap(), (n("a"), Start::Oldest));
        assert_eq!(parse_channel("a@last:5").unwrap(), (n("a"), Start::Last(5)));
        assert_eq!(
            parse_channel("a@00000000000000ab:9").unwrap(),
            (
                n("a"),
                Start::After {
                    epoch: Epoch(0xab),
                    offset: Offset(9)
                }
            )
        );
        for bad in [
            "",
            "a@",
            "a@last:0",
            "a@last:x",
            "a@later",
            "a@ab:1",
            "bad name@new",
            "a@00000000000000ab:",
        ] {
            assert!(parse_channel(bad).is_err(), "{bad:?}");
        }
    }
}
