use crate::config::{Config, normalize_origin};

const LISTENERS: &str = "[listener.pub]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
        [listener.priv]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n";
const KEY: &str = "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
const HASH: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

fn load(extra: &str) -> Result<Config, String> {
    Config::from_toml_str(&format!("{LISTENERS}{extra}"), "t.toml").map_err(|e| e.to_string())
}

fn err(extra: &str) -> String {
    load(extra).unwrap_err()
}

#[test]
fn publishers_parse_and_default_to_publish_only() {
    let c = load(&format!(
            "[publisher.billing]\nkeys=['{KEY}']\ntoken_hashes=['{HASH}']\ncertificates=['billing.intranet']\nchannels=['orders.*','bills']\n"
        ))
        .unwrap();
    let p = &c.publishers[0];
    assert_eq!(p.name, "billing");
    assert_eq!(p.keys.len(), 1);
    assert_eq!(p.token_hashes[0][0], 0xba);
    assert!(p.ops.publish && !p.ops.create && !p.ops.delete);
    assert!(p.may_use("orders.eu") && p.may_use("bills") && !p.may_use("billsx"));
}

#[test]
fn publisher_errors_name_the_publisher_and_the_key() {
    for (extra, want) in [
        (
            "[publisher.p]\nchannels=['a']\n",
            "publisher `p`: no credential",
        ),
        (
            "[publisher.p]\nkeys=['ed25519:AAAA']\nchannels=['a']\n",
            "publisher `p`, key `keys`",
        ),
        (
            "[publisher.p]\ntoken_hashes=['plain-token']\nchannels=['a']\n",
            "publisher `p`, key `token_hashes`",
        ),
        (
            &format!("[publisher.p]\ntoken_hashes=['{HASH}']\n"),
            "publisher `p`, key `channels`",
        ),
        (
            &format!("[publisher.p]\ntoken_hashes=['{HASH}']\nchannels=['a b']\n"),
            "publisher `p`, key `channels`",
        ),
        (
            &format!(
                "[publisher.p]\ntoken_hashes=['{HASH}']\nchannels=['a']\noperations=['subscribe']\n"
            ),
            "publisher `p`, key `operations`",
        ),
        (
            &format!("[publisher.p]\ntoken_hashes=['{HASH}']\nchannels=['a']\ntoken='x'\n"),
            "unknown field `token`",
        ),
    ] {
        let e = err(extra);
        assert!(e.contains(want), "{extra}: {e}");
    }
}

#[test]
fn issuers_parse_with_defaults_and_refuse_unsafe_settings() {
    let c = load(
            "[issuer.corp]\nissuer='https://sso.example.com/realms/x'\naudiences=['tslm']\nchannels_claim='tslm_channels'\n",
        )
        .unwrap();
    let i = &c.issuers[0];
    assert_eq!(i.keys, super::KeySource::Discovery);
    assert_eq!(i.algorithms, [super::JwtAlgorithm::RS256]);
    assert_eq!(i.leeway.as_secs(), super::defaults::LEEWAY_SECONDS);
    for (extra, want) in [
        (
            "[issuer.c]\naudiences=['a']\nchannels_claim='c'\n",
            "key `issuer`",
        ),
        (
            "[issuer.c]\nissuer='https://x'\nchannels_claim='c'\n",
            "key `audiences`",
        ),
        (
            "[issuer.c]\nissuer='https://x'\naudiences=['a']\n",
            "key `channels_claim`",
        ),
        (
            "[issuer.c]\nissuer='https://x'\naudiences=['a']\nchannels_claim='c'\nalgorithms=['HS256']\n",
            "key `algorithms`",
        ),
        (
            "[issuer.c]\nissuer='corp'\naudiences=['a']\nchannels_claim='c'\nsecret='c2hvcnQ='\n",
            "at least 32 bytes",
        ),
        (
            "[issuer.c]\nissuer='corp'\naudiences=['a']\nchannels_claim='c'\n",
            "discovery needs the issuer to be an http",
        ),
        (
            "[issuer.c]\nissuer='https://x'\naudiences=['a']\nchannels_claim='c'\nalgorithms=['none']\n",
            "issuer",
        ),
        (
            "[issuer.c]\nissuer='https://x'\naudiences=['a']\nchannels_claim='c'\nleeway_seconds=3600\n",
            "key `leeway_seconds`",
        ),
        (
            "[issuer.c]\nissuer='https://u:p@x'\naudiences=['a']\nchannels_claim='c'\n",
            "key `issuer`: url carries credentials (userinfo)",
        ),
        (
            "[issuer.c]\nissuer='corp'\njwks_url='https://x@idp.example/jwks'\naudiences=['a']\nchannels_claim='c'\n",
            "key `jwks_url`: url carries credentials (userinfo)",
        ),
        (
            "[issuer.c]\nissuer='corp'\njwks_url='http://[::1/jwks'\naudiences=['a']\nchannels_claim='c'\n",
            "key `jwks_url`: url is not a valid absolute url",
        ),
    ] {
        let e = err(extra);
        assert!(e.contains(want), "{extra}: {e}");
    }
}

#[test]
fn token_hashes_are_exactly_64_hex_digits_and_secrets_never_print() {
    assert!(super::parse_token_hash(HASH).is_some());
    let plus = format!("sha256:+{}", &HASH[8..]);
    assert_eq!(plus.len(), HASH.len());
    assert_eq!(super::parse_token_hash(&plus), None);
    let c = load(
            "[issuer.h]\nissuer='corp'\naudiences=['t']\nchannels_claim='c'\nsecret='c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ=='\n",
        )
        .unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("Secret(40 bytes)"), "{shown}");
    assert!(!shown.contains("115, 101, 99"), "secret bytes in Debug");
}

#[test]
fn ambiguous_identities_are_refused() {
    let e = err(&format!(
        "[publisher.a]\ntoken_hashes=['{HASH}']\nchannels=['x']\n[publisher.b]\ntoken_hashes=['{HASH}']\nchannels=['y']\n"
    ));
    assert!(
        e.contains("publisher `b`, key `token_hashes`") && e.contains("`a`"),
        "{e}"
    );
    let e = err(
        "[publisher.a]\ncertificates=['svc']\nchannels=['x']\n[publisher.b]\ncertificates=['svc']\nchannels=['y']\n",
    );
    assert!(e.contains("publisher `b`, key `certificates`"), "{e}");
    let e = err(
        "[issuer.a]\nissuer='https://x'\naudiences=['t']\nchannels_claim='c'\n[issuer.b]\nissuer='https://x'\naudiences=['t']\nchannels_claim='c'\n",
    );
    assert!(e.contains("issuer `b`, key `issuer`"), "{e}");
    let e = err("[issuer.a]\nissuer='https://x'\naudiences=['t']\nscope_prefix=''\n");
    assert!(e.contains("key `scope_prefix`"), "{e}");
    let e = err(
        "[issuer.a]\nissuer='https://x'\naudiences=['t']\nchannels_claim='c'\nmax_token_bytes=65536\n",
    );
    assert!(e.contains("key `max_token_bytes`"), "{e}");
}

#[test]
fn authentication_without_identities_is_refused_at_startup() {
    let e = Config::from_toml_str(
        "[listener.p]\nip='127.0.0.1'\nport=0\npublisher_auth=true\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("key `publisher_auth`"), "{e}");
    let e = err("[channel.\"s.*\"]\nsubscribers='authenticated'\n");
    assert!(e.contains("key `subscribers`"), "{e}");
    let e = Config::from_toml_str(
        "[listener.p]\nip='127.0.0.1'\nport=0\nsubscriber_auth=true\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("key `subscriber_auth`"), "{e}");
    let e = Config::from_toml_str(
        "[listener.p]\nip='127.0.0.1'\nport=0\ntls_cert='c.pem'\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("tls_key"), "{e}");
}

#[test]
fn origins_are_normalised_as_browsers_send_them() {
    assert_eq!(
        normalize_origin("HTTPS://App.Example.com:443").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        normalize_origin("http://localhost:3000").as_deref(),
        Some("http://localhost:3000")
    );
    assert_eq!(
        normalize_origin("http://[::1]:8080").as_deref(),
        Some("http://[::1]:8080")
    );
    for bad in [
        "null",
        "app.example.com",
        "ftp://x",
        "https://x/path",
        "https://",
        "https://x:99999",
        "https://u@x",
    ] {
        assert_eq!(normalize_origin(bad), None, "{bad}");
    }
    let e = Config::from_toml_str(
        "[listener.p]\nip='127.0.0.1'\nport=0\nallowed_origins=['https://x/']\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("key `allowed_origins`"), "{e}");
}
