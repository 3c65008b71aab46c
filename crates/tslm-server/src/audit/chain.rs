//! The hash chain of the audit log, with no I/O of its own beyond the reader it is handed: each
//! line is one JSON object whose `prev` is the SHA-256 (lowercase hex) of the previous line's
//! bytes, without its newline; the first line of a file has `seq` 0 and `prev` [`GENESIS`].

use std::io::{BufRead, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

/// The `prev` of the first line of a chain: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest line read back (a record is a few hundred bytes; this only bounds a broken file).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// SHA-256 of a line's bytes (without its newline).
pub(crate) fn line_hash(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Where a chain goes on: the next line's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    pub next_seq: u64,
    pub prev: String,
}

impl Tail {
    /// The start of a new chain.
    pub(crate) fn genesis() -> Self {
        Self {
            next_seq: 0,
            prev: GENESIS.to_owned(),
        }
    }
}

/// Why the end of an existing audit file cannot be continued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TailError {
    #[error("cannot read it: {0}")]
    Io(String),
    #[error(
        "its last line is incomplete (no newline at the end: a write was cut short); check it with `tslm audit verify`, then move the file aside or remove the partial line"
    )]
    Incomplete,
    #[error("its last line is longer than {MAX_LINE_BYTES} bytes: this is not an audit log")]
    TooLong,
    #[error(
        "its last line is not an audit record ({0}); check it with `tslm audit verify`, then move the file aside"
    )]
    NotARecord(String),
}

/// Reads the last line of `file` (from its end, never the whole file) and returns where the chain
/// goes on: `None` for an empty file.
pub(crate) fn read_tail<F: Read + Seek>(file: &mut F) -> Result<Option<Tail>, TailError> {
    let io = |e: std::io::Error| TailError::Io(e.to_string());
    let len = file.seek(SeekFrom::End(0)).map_err(io)?;
    if len == 0 {
        return Ok(None);
    }
    // Enough for any line we write, plus the newline before it.
    let window = len.min(MAX_LINE_BYTES as u64 + 2);
    file.seek(SeekFrom::Start(len - window)).map_err(io)?;
    let mut buf = Vec::with_capacity(usize::try_from(window).unwrap_or(0));
    file.take(window).read_to_end(&mut buf).map_err(io)?;
    let Some(body) = buf.strip_suffix(b"\n") else {
        return Err(TailError::Incomplete);
    };
    let line = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => &body[i + 1..],
        None if window == len => body,
        None => return Err(TailError::TooLong),
    };
    let fields = record_fields(line).map_err(TailError::NotARecord)?;
    Ok(Some(Tail {
        next_seq: fields.seq.saturating_add(1),
        prev: hex(&line_hash(line)),
    }))
}

/// The chain fields of one line.
struct Fields {
    seq: u64,
    prev: String,
    kind: String,
}

fn record_fields(line: &[u8]) -> Result<Fields, String> {
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "not a JSON object".to_owned())?;
    let seq = obj
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "no `seq` number".to_owned())?;
    let prev = obj
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .filter(|p| p.len() == 64 && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| "no `prev` hash (64 lowercase hex digits)".to_owned())?
        .to_owned();
    let kind = obj
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| "no `type`".to_owned())?
        .to_owned();
    Ok(Fields { seq, prev, kind })
}

/// What `tslm audit verify` found in a file whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines (records) in the file.
    pub records: u64,
    /// `seq` of the last record (`None` for an empty file).
    pub last_seq: Option<u64>,
    /// The hash of the last line: what the next record's `prev` will be.
    pub last_hash: String,
    /// `start` records: how many times the gateway opened the file.
    pub starts: u64,
    /// `dropped` records, and the authentication records they count.
    pub dropped_records: u64,
    pub dropped_total: u64,
    /// The `type` of the last record (`stop` after a clean shutdown); `None` for an empty file.
    pub last_type: Option<String>,
}

/// Where and why a file fails verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct VerifyError {
    /// 1-based line number (0 when the file cannot be read at all).
    pub line: u64,
    pub problem: String,
}

/// Checks that every line of `reader` is a record, that `seq` starts at 0 and goes up by one on
/// every line, and that each `prev` is the hash of the line before (the first: [`GENESIS`]).
pub fn verify<R: BufRead>(mut reader: R) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport {
        records: 0,
        last_seq: None,
        last_hash: GENESIS.to_owned(),
        starts: 0,
        dropped_records: 0,
        dropped_total: 0,
        last_type: None,
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line_no = report.records + 1;
        let fail = |problem: String| VerifyError {
            line: line_no,
            problem,
        };
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if n == 0 {
            return Ok(report);
        }
        let Some(line) = buf.strip_suffix(b"\n") else {
            if n > MAX_LINE_BYTES {
                return Err(fail(format!("longer than {MAX_LINE_BYTES} bytes")));
            }
            return Err(fail(
                "incomplete: the file ends without a newline (the last record was cut short)"
                    .into(),
            ));
        };
        let fields = record_fields(line).map_err(fail)?;
        let expected_seq = report.last_seq.map_or(0, |s| s.saturating_add(1));
        if fields.seq != expected_seq {
            return Err(fail(format!(
                "`seq` is {}, expected {expected_seq} (a record is missing, repeated or out of order)",
                fields.seq
            )));
        }
        if fields.prev != report.last_hash {
            let what = if report.records == 0 {
                "the genesis value".to_owned()
            } else {
                format!("the hash of line {}", report.records)
            };
            return Err(fail(format!(
                "`prev` is {}, expected {} ({what}): the line before was changed, removed or inserted",
                fields.prev, report.last_hash
            )));
        }
        match fields.kind.as_str() {
            "start" => report.starts += 1,
            "dropped" => {
                report.dropped_records += 1;
                let count = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("count").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0);
                report.dropped_total = report.dropped_total.saturating_add(count);
            }
            _ => {}
        }
        report.records += 1;
        report.last_seq = Some(fields.seq);
        report.last_type = Some(fields.kind);
        report.last_hash = hex(&line_hash(line));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn line(seq: u64, prev: &str, kind: &str) -> String {
        format!(r#"{{"seq":{seq},"ts":"t","prev":"{prev}","type":"{kind}"}}"#)
    }

    /// A valid chain of `n` lines.
    fn chain(n: u64) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        (0..n)
            .map(|seq| {
                let l = line(seq, &prev, if seq == 0 { "start" } else { "publish" });
                prev = hex(&line_hash(l.as_bytes()));
                l
            })
            .collect()
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn a_valid_chain_verifies_and_its_tail_continues_it() {
        let lines = chain(5);
        let t = text(&lines);
        let r = verify(t.as_bytes()).unwrap();
        assert_eq!(r.records, 5);
        assert_eq!(r.last_seq, Some(4));
        assert_eq!(r.starts, 1);
        assert_eq!(r.last_type.as_deref(), Some("publish"));
        let tail = read_tail(&mut std::io::Cursor::new(t.as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(tail.next_seq, 5);
        assert_eq!(tail.prev, r.last_hash);
        // An empty file: an empty chain, and a new one starts at genesis.
        let empty = verify(&b""[..]).unwrap();
        assert_eq!((empty.records, empty.last_seq), (0, None));
        assert_eq!(read_tail(&mut std::io::Cursor::new(b"")).unwrap(), None);
    }

    #[test]
    fn every_kind_of_damage_is_found_with_its_line() {
        let lines = chain(4);
        let err = |t: &str| verify(t.as_bytes()).unwrap_err();
        // A middle line removed.
        let mut l = lines.clone();
        l.remove(2);
        let e = err(&text(&l));
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("`seq` is 3, expected 2"), "{e}");
        // A field edited: the next line's `prev` no longer matches.
        let mut l = lines.clone();
        l[1] = l[1].replace("publish", "delete");
        let e = err(&text(&l));
        assert_eq!(e.line, 3);
        assert!(e.problem.contains("hash of line 2"), "{e}");
        // The last line cut half-way.
        let t = text(&lines);
        let e = err(&t[..t.len() - 20]);
        assert_eq!(e.line, 4);
        assert!(e.problem.contains("incomplete"), "{e}");
        // Not JSON, not an object, no seq, a bad prev, no type.
        for (bad, what) in [
            ("nope", "not JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"prev":"x"}"#, "no `seq`"),
            (r#"{"seq":0,"prev":"x","type":"a"}"#, "no `prev`"),
            (
                &line(0, GENESIS, "x").replace(r#","type":"x""#, ""),
                "no `type`",
            ),
        ] {
            let e = err(&format!("{bad}\n"));
            assert_eq!(e.line, 1);
            assert!(e.problem.contains(what), "{bad}: {e}");
        }
        // The first line must start the chain.
        let e = err(&format!("{}\n", line(0, &"1".repeat(64), "start")));
        assert!(e.problem.contains("genesis"), "{e}");
        let e = err(&format!("{}\n", line(7, GENESIS, "start")));
        assert!(e.problem.contains("expected 0"), "{e}");
        // A line too long to be ours.
        let e = err(&"x".repeat(MAX_LINE_BYTES + 10));
        assert!(e.problem.contains("longer than"), "{e}");
    }

    #[test]
    fn a_damaged_tail_is_not_continued() {
        let t = text(&chain(3));
        let tail = |b: &[u8]| read_tail(&mut std::io::Cursor::new(b.to_vec()));
        assert_eq!(
            tail(&t.as_bytes()[..t.len() - 5]),
            Err(TailError::Incomplete)
        );
        assert!(matches!(
            tail(b"{\"seq\":1}\n"),
            Err(TailError::NotARecord(m)) if m.contains("prev")
        ));
        assert!(matches!(tail(b"garbage\n"), Err(TailError::NotARecord(_))));
        let mut long = vec![b'x'; MAX_LINE_BYTES + 10];
        long.push(b'\n');
        assert_eq!(tail(&long), Err(TailError::TooLong));
        // A single line file (no newline before it) is read whole.
        let one = text(&chain(1));
        assert_eq!(tail(one.as_bytes()).unwrap().unwrap().next_seq, 1);
    }

    #[test]
    fn dropped_records_are_counted() {
        let mut lines = chain(2);
        let prev = hex(&line_hash(lines[1].as_bytes()));
        lines.push(format!(
            r#"{{"seq":2,"ts":"t","prev":"{prev}","type":"dropped","count":7}}"#
        ));
        let r = verify(text(&lines).as_bytes()).unwrap();
        assert_eq!((r.dropped_records, r.dropped_total), (1, 7));
    }

    /// A reader (and seeker) that fails.
    struct Broken;

    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("bad sector"))
        }
    }

    impl Seek for Broken {
        fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
            Ok(100)
        }
    }

    #[test]
    fn read_errors_are_reported() {
        let e = verify(std::io::BufReader::new(Broken)).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.problem.contains("cannot read: bad sector"), "{e}");
        assert!(
            matches!(read_tail(&mut Broken), Err(TailError::Io(m)) if m.contains("bad sector"))
        );
    }
}
