//! A minimal WebSocket client for load generation: a raw handshake and a frame codec that reads
//! frames in place from one buffer per connection. Hand-written because the benchmark must cost
//! far less per delivery than the servers it measures; it trusts the servers it talks to and
//! checks only what it needs (101 status, frame lengths).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Opens a TCP connection (from `source` when given) and performs a WebSocket handshake.
/// Returns the stream and any bytes read past the handshake response.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    path: &str,
    protocol: Option<&str>,
) -> io::Result<(TcpStream, Vec<u8>)> {
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
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during handshake",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            if !head.starts_with("HTTP/1.1 101") {
                let status = head.lines().next().unwrap_or("").to_string();
                return Err(io::Error::other(format!("handshake refused: {status}")));
            }
            return Ok((stream, buf[end + 4..].to_vec()));
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("handshake response too large"));
        }
    }
}

/// Appends a masked client frame.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
}

/// Reads server frames into one growing buffer and hands out complete frames in place.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
}

impl Reader {
    pub fn new(leftover: Vec<u8>, capacity: usize) -> Self {
        let mut buf = leftover;
        buf.reserve(capacity.saturating_sub(buf.len()));
        Self { buf, start: 0 }
    }

    /// Reads once from `stream` and calls `on_frame(opcode, fin, payload)` for every complete
    /// frame now buffered. Returns `Ok(false)` at end of stream.
    pub async fn read_frames(
        &mut self,
        stream: &mut (impl tokio::io::AsyncRead + Unpin),
        mut on_frame: impl FnMut(u8, bool, &[u8]),
    ) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        if self.buf.capacity() - len < 4096 {
            self.buf.reserve(self.buf.capacity().max(8192));
        }
        let cap = self.buf.capacity();
        self.buf.resize(cap, 0);
        let n = stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Ok(false);
        }
        loop {
            let avail = &self.buf[self.start..];
            let Some((header, payload_len)) = parse_header(avail) else {
                break;
            };
            if avail.len() < header + payload_len {
                break;
            }
            let b0 = avail[0];
            on_frame(
                b0 & 0x0f,
                b0 & 0x80 != 0,
                &avail[header..header + payload_len],
            );
            self.start += header + payload_len;
        }
        Ok(true)
    }
}

/// (header length, payload length) of the frame at the start of `b`, when its header is complete.
fn parse_header(b: &[u8]) -> Option<(usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let mask_len = if masked { 4 } else { 0 };
    match b[1] & 0x7f {
        126 => {
            let len = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as usize;
            (b.len() >= 4 + mask_len).then_some((4 + mask_len, len))
        }
        127 => {
            let len = u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize;
            (b.len() >= 10 + mask_len).then_some((10 + mask_len, len))
        }
        n => Some((2 + mask_len, n as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header(&[0x81, 5]), Some((2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1, 0]), Some((4, 256)));
        assert_eq!(
            parse_header(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            Some((10, 65536))
        );
        assert_eq!(parse_header(&[0x81]), None);
        let mut out = Vec::new();
        encode(OP_TEXT, b"hi", &mut out);
        assert_eq!(out.len(), 2 + 4 + 2);
        assert_eq!(parse_header(&out), Some((6, 2)));
    }
}
