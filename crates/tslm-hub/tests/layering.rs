//! The hub knows nothing of sockets or WebSocket framing: dependencies point one way
//! (protocol <- hub <- server). This fails on a back-edge: a source file of the hub, or its
//! manifest, naming the WebSocket frame type, a WebSocket or HTTP library, or tokio's I/O.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &["WsFrame", "tungstenite", "hyper", "axum", "tokio::net"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether `text` names `word` as a whole identifier or path (not inside a longer name).
fn names(text: &str, word: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    text.match_indices(word).any(|(at, _)| {
        !ident(text[..at].chars().next_back()) && !ident(text[at + word.len()..].chars().next())
    })
}

#[test]
fn the_hub_names_no_socket_or_websocket_framing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.push(root.join("Cargo.toml"));
    assert!(files.len() > 5, "the hub's sources were found");
    let mut found = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for word in FORBIDDEN {
            if names(&text, word) {
                found.push(format!(
                    "{} names `{word}`",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(found.is_empty(), "back-edges from the hub: {found:#?}");
}

#[test]
fn the_check_finds_what_it_looks_for() {
    assert!(names("use tslm_protocol::WsFrame;", "WsFrame"));
    assert!(names("tokio::net::TcpStream", "tokio::net"));
    assert!(!names("a hyperlink", "hyper"));
    assert!(!names("WsFrameish", "WsFrame"));
}
