//! HTTP publish body (`tslm_protocol::Payload::from_json_bytes`) on arbitrary bodies.
//!
//! Properties, beyond "does not panic":
//! - a body is accepted exactly when it is one JSON text (differential check against the
//!   independent RFC 8259 recogniser in `tslm_fuzz`);
//! - the payload is the body without its surrounding JSON whitespace, as a zero-copy slice of it
//!   (so in particular a substring of the input), labelled `Text` exactly when it is a string;
//! - it parses as JSON (as a `serde_json::Value` unless beyond serde_json's limits).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tslm_fuzz::{is_json_text, is_json_value, is_within, trim_json_ws, value_if_representable};
use tslm_protocol::{Payload, PayloadKind};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let valid = is_json_text(data);
    match Payload::from_json_bytes(body.clone()) {
        Ok(payload) => {
            assert!(valid, "accepted a body that is not one JSON text");
            let json = payload.json();
            assert_eq!(
                &json[..],
                trim_json_ws(data),
                "payload is not the trimmed body"
            );
            assert!(is_within(&body, json), "payload is not a slice of the body");
            assert!(is_json_value(json));
            assert_eq!(payload.len(), json.len());
            assert!(!payload.is_empty());
            assert_eq!(
                payload.kind() == PayloadKind::Text,
                json.first() == Some(&b'"')
            );
            let _ = value_if_representable(json);
        }
        Err(e) => {
            assert!(!valid, "refused a valid JSON body: {e}");
        }
    }
});
