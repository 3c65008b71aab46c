//! A minimal Server-Sent Events client for load generation: a raw `GET` over TCP, the response
//! head, then the body (HTTP/1.1 chunked or not) cut into events (`event:`, `id:`, `data:`
//! lines, a blank line ending each). Hand-written for the reason `ws.rs` is: the benchmark must
//! cost far less per delivery than the servers it measures, so one buffer per stream and events
//! handed out in place where their data is one line. It trusts the servers it talks to and
//! checks only what it needs (200 status, chunk lengths).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// One event: its type (`message` when it has no `event:` line), its last `id:`, its data (lines
/// joined with `\n`).
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: &'a [u8],
    pub id: Option<&'a [u8]>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

/// Opens a TCP connection (from `source` when given) and sends `GET path` asking for an event
/// stream. Returns the stream and a reader holding whatever followed the response head.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
) -> io::Result<(TcpStream, Reader)> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                let status = head.lines().next().unwrap_or("").to_string();
                let body = String::from_utf8_lossy(&buf[end + 4..]).to_string();
                return Err(io::Error::other(format!(
                    "event stream refused: {status} {body}"
                )));
            }
            let chunked = head
                .lines()
                .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            let mut reader = Reader::new(chunked);
            reader.feed(&buf[end + 4..])?;
            return Ok((stream, reader));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("response head too large"));
        }
    }
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (hex digits, maybe extensions, CRLF).
    Size,
    /// Body bytes left in the current chunk.
    Data(usize),
    /// The CRLF after a chunk's data: bytes of it left.
    End(u8),
    /// The last chunk was read: the stream is over.
    Done,
}

/// The body of one event stream: de-chunked into `body`, from which whole events are cut.
pub struct Reader {
    chunked: Option<Chunk>,
    /// A chunk-size line not yet complete.
    size_line: Vec<u8>,
    body: Vec<u8>,
    /// The part of `body` already handed out.
    start: usize,
    read_buf: Vec<u8>,
}

impl Reader {
    pub fn new(chunked: bool) -> Self {
        Self {
            chunked: chunked.then_some(Chunk::Size),
            size_line: Vec::new(),
            body: Vec::with_capacity(4096),
            start: 0,
            read_buf: vec![0; 16 * 1024],
        }
    }

    /// Adds bytes of the response body as they came off the socket.
    pub fn feed(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let Some(mut state) = self.chunked else {
            self.body.extend_from_slice(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            match state {
                Chunk::Size => match bytes.iter().position(|&b| b == b'\n') {
                    Some(eol) => {
                        self.size_line.extend_from_slice(&bytes[..eol]);
                        bytes = &bytes[eol + 1..];
                        let line = std::str::from_utf8(&self.size_line)
                            .map_err(|_| io::Error::other("bad chunk size"))?;
                        let hex = line.split(';').next().unwrap_or("").trim();
                        let n = usize::from_str_radix(hex, 16)
                            .map_err(|_| io::Error::other("bad chunk size"))?;
                        self.size_line.clear();
                        state = if n == 0 { Chunk::Done } else { Chunk::Data(n) };
                    }
                    None => {
                        self.size_line.extend_from_slice(bytes);
                        if self.size_line.len() > 1024 {
                            return Err(io::Error::other("chunk size line too long"));
                        }
                        bytes = &[];
                    }
                },
                Chunk::Data(left) => {
                    let n = left.min(bytes.len());
                    self.body.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    state = if n == left {
                        Chunk::End(2)
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::End(left) => {
                    bytes = &bytes[1..];
                    state = if left == 1 {
                        Chunk::Size
                    } else {
                        Chunk::End(1)
                    };
                }
                Chunk::Done => bytes = &[],
            }
        }
        self.chunked = Some(state);
        Ok(())
    }

    /// Reads once from `stream` and calls `on_event` for every complete event now buffered.
    /// Returns `Ok(false)` at the end of the stream.
    pub async fn read_events(
        &mut self,
        stream: &mut TcpStream,
        on_event: impl FnMut(Event<'_>),
    ) -> io::Result<bool> {
        let n = stream.read(&mut self.read_buf).await?;
        if n == 0 {
            return Ok(false);
        }
        let buf = std::mem::take(&mut self.read_buf);
        let fed = self.feed(&buf[..n]);
        self.read_buf = buf;
        fed?;
        self.events(on_event);
        Ok(self.chunked != Some(Chunk::Done))
    }

    /// Hands out the complete events buffered (comments and events without data skipped, as
    /// `EventSource` does).
    pub fn events(&mut self, mut on_event: impl FnMut(Event<'_>)) {
        loop {
            let avail = &self.body[self.start..];
            let Some(end) = avail.windows(2).position(|w| w == b"\n\n") else {
                break;
            };
            let block = &avail[..end];
            self.start += end + 2;
            if let Some(e) = parse_event(block) {
                on_event(e);
            }
        }
        if self.start > 0 && self.start * 2 >= self.body.len() {
            self.body.drain(..self.start);
            self.start = 0;
        }
    }
}

/// One event block (its lines, without the blank line ending it); `None` when it has no data.
fn parse_event(block: &[u8]) -> Option<Event<'_>> {
    let mut kind: &[u8] = b"message";
    let mut id = None;
    let mut data: Option<std::borrow::Cow<'_, [u8]>> = None;
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b':') {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => kind = value,
            b"id" => id = Some(value),
            b"data" => {
                data = Some(match data {
                    None => std::borrow::Cow::Borrowed(value),
                    Some(d) => {
                        let mut d = d.into_owned();
                        d.push(b'\n');
                        d.extend_from_slice(value);
                        std::borrow::Cow::Owned(d)
                    }
                })
            }
            _ => {}
        }
    }
    data.map(|data| Event { kind, id, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut Reader) -> Vec<(String, Option<String>, String)> {
        let mut out = Vec::new();
        r.events(|e| {
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            out.push((s(e.kind), e.id.map(s), s(&e.data)));
        });
        out
    }

    #[test]
    fn chunked_bodies_cut_anywhere_give_whole_events() {
        let body = "retry: 3000\n\n: keep-alive\n\nevent: message\nid: a.1:2\ndata: {\"x\":\ndata: 1}\n\ndata: plain\n\n";
        // Chunks of 7 bytes, then the whole encoded stream fed one byte at a time.
        let mut encoded = Vec::new();
        for c in body.as_bytes().chunks(7) {
            encoded.extend_from_slice(format!("{:x};ext=1\r\n", c.len()).as_bytes());
            encoded.extend_from_slice(c);
            encoded.extend_from_slice(b"\r\n");
        }
        encoded.extend_from_slice(b"0\r\n\r\n");
        let mut r = Reader::new(true);
        let mut got = Vec::new();
        for b in &encoded {
            r.feed(std::slice::from_ref(b)).unwrap();
            got.extend(collect(&mut r));
        }
        assert_eq!(
            got,
            [
                ("message".into(), Some("a.1:2".into()), "{\"x\":\n1}".into()),
                ("message".into(), None, "plain".into()),
            ]
        );
        assert_eq!(r.chunked, Some(Chunk::Done));
        let mut bad = Reader::new(true);
        assert!(bad.feed(b"zz\r\n").is_err());
    }

    #[test]
    fn unchunked_bodies_and_named_events() {
        let mut r = Reader::new(false);
        r.feed(b"event: end\ndata: {}\n\nid: 5\ndata: a").unwrap();
        assert_eq!(collect(&mut r), [("end".into(), None, "{}".into())]);
        r.feed(b"\n\n").unwrap();
        assert_eq!(
            collect(&mut r),
            [("message".into(), Some("5".into()), "a".into())]
        );
    }
}
