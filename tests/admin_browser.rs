//! The admin page in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/browser/admin.mjs`) with the admin listener's token, after real traffic. Checks what
//! an operator sees (listeners, counts, channels), that the page has no script and reloads
//! itself, and saves a screenshot as a test artefact (`target/tmp/admin-page.png`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

const TOKEN: &str = "ops-secret-7";

/// Loads the admin page at `url` in headless Chromium; returns what the page showed.
async fn browse_admin(url: &str, screenshot: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/admin.mjs");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(url)
            .arg(TOKEN)
            .arg(screenshot)
            .arg("30000")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends in time")
    .expect("node runs (the test command installs Node.js, Chromium and tests/browser)");
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "page result not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn row<'a>(table: &'a Value, first_cell: &str) -> &'a Value {
    table
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[0] == first_cell)
        .unwrap_or_else(|| panic!("no row `{first_cell}` in {table}"))
}

#[tokio::test]
async fn the_admin_page_shows_real_traffic_in_a_browser() {
    let srv = TestServer::start(&format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [listener.ops]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Admin']\nauth_tokens=['{TOKEN}']\n"
    ))
    .await;
    let private = srv.addr("private");
    for ch in ["news.eu", "news.us"] {
        let (status, _, r) = http(private, "PUT", &format!("/v1/channels/{ch}"), &[], "").await;
        assert_eq!(status, 201, "{r}");
    }
    let mut ws = v1(&srv.url("public")).await;
    let r = call(&mut ws, r#"{"op":"subscribe","channel":"news.eu","id":1}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    for n in 1..=2 {
        let (status, _, r) = http(
            private,
            "POST",
            "/v1/channels/news.eu/messages",
            &[("Content-Type", "application/json")],
            &n.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(recv_json(&mut ws).await["offset"], n);
    }
    // A refused publish (no such channel).
    let (status, _, r) = http(
        private,
        "POST",
        "/v1/channels/news.none/messages",
        &[("Content-Type", "application/json")],
        "1",
    )
    .await;
    assert_eq!(status, 404, "{r}");
    // A refused scrape: one HTTP authentication refusal.
    let (status, _, _) = http(srv.addr("ops"), "GET", "/metrics", &[], "").await;
    assert_eq!(status, 401);

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&shot);
    let seen = browse_admin(&format!("http://{}/admin", srv.addr("ops")), &shot).await;
    assert_eq!(seen["status"], 200, "{seen}");
    let page = &seen["first"];
    assert_eq!(page["title"], "TSLM admin", "{seen}");
    assert_eq!(page["refresh"], "5", "{seen}");
    assert_eq!(page["scripts"], 0, "no script on the page: {seen}");
    assert_eq!(row(&page["node"], "version")[1], env!("CARGO_PKG_VERSION"));
    let listeners = &page["listeners"];
    for (name, perms, tokens) in [
        ("ops", "Admin", "required"),
        ("private", "CreateChannel,NotifyChannel", "none"),
        ("public", "Subscribe", "none"),
    ] {
        let r = row(listeners, name);
        assert_eq!(
            &r.as_array().unwrap()[..5],
            &json!([name, srv.addr(name).to_string(), perms, "none", tokens])
                .as_array()
                .unwrap()[..],
            "{listeners}"
        );
    }
    // The subscriber is the public listener's one connection, of its default 100000 slots.
    assert_eq!(row(listeners, "public")[5], "1 / 100000", "{listeners}");
    let counts = &page["counts"];
    for (what, n) in [
        ("channels", "2"),
        ("WebSocket sessions", "1"),
        ("subscriptions", "1"),
        ("publishes", "2"),
        ("deliveries", "2"),
    ] {
        assert_eq!(row(counts, what)[1], n, "{what}: {counts}");
    }
    assert_eq!(
        row(
            &page["refusals"],
            "HTTP requests refused authentication (401)"
        )[1],
        "1"
    );
    assert_eq!(
        row(&page["refusals"], "publishes refused (any code)")[1],
        "1"
    );
    let channels = &page["channels"];
    assert_eq!(
        channels.as_array().unwrap().len(),
        3,
        "a header and two channels: {channels}"
    );
    let eu = row(channels, "news.eu");
    assert_eq!(
        (&eu[1], &eu[2], &eu[3]),
        (&json!("1"), &json!("2"), &json!("2")),
        "subscribers, head offset, backlog messages: {eu}"
    );
    assert_eq!(
        row(channels, "news.us"),
        &json!(["news.us", "0", "0", "0", "0"])
    );
    assert_eq!(page["next"], Value::Null, "one page only");
    // The page reloaded itself and still shows the same figures.
    assert!(seen["loads"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["second"]["channels"], *channels);
    assert_eq!(row(&seen["second"]["counts"], "publishes")[1], "2");
    // The screenshot is there, a PNG.
    let png = std::fs::read(&shot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    drop(ws);
    srv.shutdown().await;
}
