//! Server-to-client WebSocket frames (RFC 6455 §5.2), encoded once per published message.
//!
//! A frame from a server is never masked, so the same bytes, header included, are valid for
//! every subscriber: the WebSocket wires ([`crate::Wire`]) build one [`WsFrame`] per message and
//! every session writes it as it is (a refcount each, gathered into one `writev` per batch).

use bytes::Bytes;

/// A complete, unmasked, final text frame: header and payload in one shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    frame: Bytes,
    header_len: usize,
}

impl WsFrame {
    /// Frames `payload` (which must be UTF-8: every caller passes encoded JSON) as one text frame.
    pub fn text(payload: &[u8]) -> Self {
        let len = payload.len();
        let mut out = Vec::with_capacity(len + 10);
        out.push(0x81); // FIN + text
        if len < 126 {
            out.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let header_len = out.len();
        out.extend_from_slice(payload);
        Self {
            frame: Bytes::from(out),
            header_len,
        }
    }

    /// The whole frame, ready to write to a socket.
    pub fn bytes(&self) -> &Bytes {
        &self.frame
    }

    /// The frame's payload (the JSON text), sharing the same buffer.
    pub fn payload(&self) -> Bytes {
        self.frame.slice(self.header_len..)
    }

    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.frame.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_for_each_length_class() {
        let f = WsFrame::text(b"hi");
        assert_eq!(&f.bytes()[..], b"\x81\x02hi");
        assert_eq!(&f.payload()[..], b"hi");
        let p = vec![b'x'; 300];
        let f = WsFrame::text(&p);
        assert_eq!(&f.bytes()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.payload().len(), 300);
        let p = vec![b'y'; 70_000];
        let f = WsFrame::text(&p);
        assert_eq!(&f.bytes()[..2], &[0x81, 127]);
        assert_eq!(
            u64::from_be_bytes(f.bytes()[2..10].try_into().unwrap()),
            70_000
        );
        assert_eq!(f.len(), 70_010);
    }
}
