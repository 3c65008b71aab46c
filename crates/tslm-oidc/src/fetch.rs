//! Fetching an issuer's key set over HTTP(S): only from configured URLs (the discovery document
//! and its `jwks_uri`, or `jwks_url`), with a timeout, a size cap, no redirects and no proxy.
//!
//! Every outbound request goes through [`get_json`], and `get_json` dials only a URL that its
//! issuer's [`OutboundPolicy`] has parsed and allowed: the policy hands back the parsed [`Url`]
//! and that same value goes to the HTTP client, so what is checked is exactly what is dialled.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;
use url::{Host, Url};

use crate::config::{Issuer, KeySource};
use crate::jwks::{JwksError, KeySet};

/// Why a key set could not be fetched. Never contains a URL's credentials or a key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("http client unavailable: {0}")]
    Client(Arc<str>),
    #[error("request failed: {0}")]
    Request(String),
    #[error("redirect not followed (status {0})")]
    Redirect(u16),
    #[error("unexpected status {0}")]
    Status(u16),
    #[error("response is not json")]
    NotJson,
    #[error("document larger than {0} bytes")]
    TooLarge(usize),
    #[error("invalid discovery document")]
    BadDiscovery,
    #[error("discovery document names another issuer")]
    IssuerMismatch,
    #[error("url is not a valid absolute url")]
    InvalidUrl,
    #[error("url scheme is not http or https")]
    UnsupportedScheme,
    #[error("url carries credentials (userinfo)")]
    UrlWithCredentials,
    #[error("url is plain http while the issuer is https")]
    Downgrade,
    #[error(
        "url is on another origin (scheme, host, port) than the issuer's configuration names \
         (configure `jwks_url` to fetch keys elsewhere)"
    )]
    ForeignOrigin,
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error("issuer has a shared secret, nothing to fetch")]
    NothingToFetch,
}

impl FetchError {
    fn request(e: reqwest::Error) -> Self {
        // The error and its sources, without the URL (which may carry credentials).
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        Self::Request(text)
    }
}

/// The HTTP client shared by all issuers.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: Result<reqwest::Client, Arc<str>>,
}

impl Http {
    /// A client with rustls over *ring*, the system's CA certificates (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` are honoured), HTTP/1.1, no redirects and no proxy.
    pub fn new() -> Self {
        let client = build_client().map_err(|e| {
            tracing::error!(error = %e, "cannot build the key set http client; key fetches will fail");
            Arc::from(e)
        });
        Self { client }
    }

    /// Fetches the issuer's current key set.
    pub async fn fetch_keys(&self, issuer: &Issuer) -> Result<KeySet, FetchFailure> {
        let client = self.client.as_ref().map_err(|e| FetchFailure {
            document: "key set",
            url: String::new(),
            error: FetchError::Client(e.clone()),
        })?;
        let (policy, first) = OutboundPolicy::for_issuer(issuer).map_err(|error| FetchFailure {
            document: "key set",
            url: String::new(),
            error,
        })?;
        let jwks_url = match &issuer.keys {
            // `first` is the discovery document; its `jwks_uri` goes through the same policy.
            KeySource::Discovery => {
                let at = |error| FetchFailure::new("discovery document", &first, error);
                let doc = get_json(client, &policy, &first, issuer)
                    .await
                    .map_err(at)?;
                jwks_uri(&doc, &issuer.issuer).map_err(at)?
            }
            // `first` is `jwks_url` (`for_issuer` refused `Secret`: nothing to fetch).
            KeySource::JwksUrl(_) | KeySource::Secret(_) => first,
        };
        let at = |error| FetchFailure::new("key set", &jwks_url, error);
        let doc = get_json(client, &policy, &jwks_url, issuer)
            .await
            .map_err(at)?;
        KeySet::parse(&doc).map_err(|e| at(e.into()))
    }
}

/// The one place that decides where the gateway may connect: the origins (scheme, host, port)
/// an issuer's configuration names, that is the issuer's own origin for discovery (its
/// discovery document and `jwks_uri` must be there) or the origin of its `jwks_url`.
///
/// URLs are compared parsed, by the `url` crate (the parser the HTTP client itself uses), never
/// as text: `http:\\host:1\x://issuer/` is `host:1` to the client, so it is `host:1` here.
/// Refused: anything that does not parse, schemes other than `http` and `https`, userinfo, an
/// `http` URL for an `https` issuer, and any URL whose origin, once normalised, differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboundPolicy {
    allowed: Origin,
}

/// A parsed URL's origin: scheme, host (domain or IP address, normalised) and port (the
/// scheme's default when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: Host<String>,
    port: u16,
}

impl Origin {
    fn of(url: &Url) -> Result<Self, FetchError> {
        let host = url.host().ok_or(FetchError::InvalidUrl)?.to_owned();
        let port = url.port_or_known_default().ok_or(FetchError::InvalidUrl)?;
        Ok(Self {
            scheme: url.scheme().to_owned(),
            host,
            port,
        })
    }
}

impl OutboundPolicy {
    /// The policy of `issuer`, and the URL its configuration fetches first (the discovery
    /// document, or `jwks_url`).
    pub fn for_issuer(issuer: &Issuer) -> Result<(Self, String), FetchError> {
        let first = match &issuer.keys {
            KeySource::Secret(_) => return Err(FetchError::NothingToFetch),
            KeySource::Discovery => discovery_url(&issuer.issuer),
            KeySource::JwksUrl(url) => url.clone(),
        };
        let policy = Self::allowing(&first)?;
        Ok((policy, first))
    }

    /// A policy allowing exactly the origin of `url` (which must itself be fetchable).
    pub fn allowing(url: &str) -> Result<Self, FetchError> {
        let url = parse_fetchable(url)?;
        Ok(Self {
            allowed: Origin::of(&url)?,
        })
    }

    /// `url` parsed, if this policy allows fetching it. The caller must dial this very value.
    pub fn check(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = parse_fetchable(url)?;
        let origin = Origin::of(&parsed)?;
        if origin == self.allowed {
            return Ok(parsed);
        }
        if self.allowed.scheme == "https" && origin.scheme == "http" {
            return Err(FetchError::Downgrade);
        }
        Err(FetchError::ForeignOrigin)
    }
}

/// Whether the gateway may fetch from `url` at all (absolute `http`/`https` with a host, no
/// userinfo), by the parser every fetch uses: for validating configured URLs at startup.
pub fn check_fetch_url(url: &str) -> Result<(), String> {
    parse_fetchable(url).map(drop).map_err(|e| e.to_string())
}

/// `url` parsed, if it is an absolute `http`/`https` URL with a host and without userinfo.
fn parse_fetchable(url: &str) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|_| FetchError::InvalidUrl)?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(FetchError::UnsupportedScheme);
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(FetchError::UrlWithCredentials);
    }
    if parsed.host().is_none() {
        return Err(FetchError::InvalidUrl);
    }
    Ok(parsed)
}

/// A [`FetchError`] with the document and URL (without credentials or query) it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{document} {url}: {error}")]
pub(crate) struct FetchFailure {
    document: &'static str,
    url: String,
    #[source]
    error: FetchError,
}

impl FetchFailure {
    fn new(document: &'static str, url: &str, error: FetchError) -> Self {
        Self {
            document,
            url: loggable_url(url),
            error,
        }
    }
}

/// `url` without userinfo, query or fragment, for logs.
pub(crate) fn loggable_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid url)".to_owned(),
    }
}

fn build_client() -> Result<reqwest::Client, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let tls = match rustls_platform_verifier::Verifier::new(provider) {
        Ok(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
        Err(e) => {
            // Plain-http key sources (tests, loopback sidecars) still work; https fails closed.
            tracing::warn!(error = %e, "no system CA certificates; https key fetches will fail");
            builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("tslm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.without_url().to_string())
}

/// `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 §4: a trailing
/// `/` of the issuer is removed first).
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// The `jwks_uri` of a discovery document whose `issuer` is exactly `expected_issuer`. Where
/// it may point is the [`OutboundPolicy`]'s decision, taken when it is fetched.
pub(crate) fn jwks_uri(document: &[u8], expected_issuer: &str) -> Result<String, FetchError> {
    let doc: Discovery = serde_json::from_slice(document).map_err(|_| FetchError::BadDiscovery)?;
    if doc.issuer != expected_issuer {
        return Err(FetchError::IssuerMismatch);
    }
    Ok(doc.jwks_uri)
}

fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// GET `url` if `policy` allows it; require 200 and a JSON content type; read at most
/// `max_document_bytes` (the body is streamed and the read stops past the cap, whatever
/// `Content-Length` says). The only function that sends a request.
async fn get_json(
    client: &reqwest::Client,
    policy: &OutboundPolicy,
    url: &str,
    issuer: &Issuer,
) -> Result<Vec<u8>, FetchError> {
    // The parsed `Url` the policy allowed is what the client dials: never the text again.
    let url: Url = policy.check(url)?;
    let max = issuer.max_document_bytes;
    let timeout: Duration = issuer.fetch_timeout;
    let mut response = client
        .get(url)
        .header(ACCEPT, "application/json, application/jwk-set+json")
        .timeout(timeout)
        .send()
        .await
        .map_err(FetchError::request)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(FetchError::Redirect(status.as_u16()));
    }
    if status != StatusCode::OK {
        return Err(FetchError::Status(status.as_u16()));
    }
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !json {
        return Err(FetchError::NotJson);
    }
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(FetchError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(FetchError::request)? {
        if body.len().saturating_add(chunk.len()) > max {
            return Err(FetchError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_strips_one_trailing_slash_style() {
        assert_eq!(
            discovery_url("https://idp.example/realms/x/"),
            "https://idp.example/realms/x/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://idp.example"),
            "https://idp.example/.well-known/openid-configuration"
        );
    }

    #[test]
    fn discovery_issuer_must_match_exactly() {
        let doc = br#"{"issuer": "https://idp.example/", "jwks_uri": "https://idp.example/keys"}"#;
        assert_eq!(
            jwks_uri(doc, "https://idp.example/").unwrap(),
            "https://idp.example/keys"
        );
        assert!(matches!(
            jwks_uri(doc, "https://idp.example"),
            Err(FetchError::IssuerMismatch)
        ));
        assert!(matches!(
            jwks_uri(b"{\"issuer\": \"x\"}", "x"),
            Err(FetchError::BadDiscovery)
        ));
    }

    fn policy(issuer: &str) -> OutboundPolicy {
        OutboundPolicy::allowing(&discovery_url(issuer)).unwrap()
    }

    #[test]
    fn policy_allows_the_issuers_own_origin_however_written() {
        let p = policy("https://idp.example/realms/x");
        for ok in [
            "https://idp.example/keys",
            "https://IDP.example:443/keys?x=1#f",
            "HTTPS://idp.example/keys",
            "https://idp.example/realms/x/protocol/openid-connect/certs",
        ] {
            let url = p.check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(url.host_str(), Some("idp.example"), "{ok}");
            assert_eq!(url.port_or_known_default(), Some(443), "{ok}");
        }
        let p = policy("http://127.0.0.1:21810");
        assert!(p.check("http://127.0.0.1:21810/keys").is_ok());
        assert!(
            p.check("http://0x7f.0.0.1:21810/keys").is_ok(),
            "same address"
        );
        let p = policy("http://idp.example");
        assert!(
            p.check("http://idp.example:80/keys").is_ok(),
            "default port"
        );
    }

    #[test]
    fn policy_refuses_other_origins_however_disguised() {
        let p = policy("http://127.0.0.1:21810");
        let cases: [(&str, FetchError); 18] = [
            // The client reads `\` as `/`: this is port 21811, whatever follows.
            (
                r"http:\\127.0.0.1:21811\x://127.0.0.1:21810/keys",
                FetchError::ForeignOrigin,
            ),
            (
                "http:/127.0.0.1:21811/x://127.0.0.1:21810/keys",
                FetchError::ForeignOrigin,
            ),
            (
                "http:127.0.0.1:21811/x://127.0.0.1:21810/keys",
                FetchError::ForeignOrigin,
            ),
            (
                "http:/\t/127.0.0.1:21811/x://127.0.0.1:21810/keys",
                FetchError::ForeignOrigin,
            ),
            ("http://127.0.0.1:21811/keys", FetchError::ForeignOrigin),
            (
                "http://127.0.0.1:21810@127.0.0.1:21811/keys",
                FetchError::UrlWithCredentials,
            ),
            (
                "http://user:pw@127.0.0.1:21810/keys",
                FetchError::UrlWithCredentials,
            ),
            ("https://127.0.0.1:21810/keys", FetchError::ForeignOrigin),
            ("ftp://127.0.0.1:21810/keys", FetchError::UnsupportedScheme),
            ("file:///etc/passwd", FetchError::UnsupportedScheme),
            (
                "http://[::ffff:127.0.0.1]:21810/keys",
                FetchError::ForeignOrigin,
            ),
            ("http://[::1]:21810/keys", FetchError::ForeignOrigin),
            ("http://localhost:21810/keys", FetchError::ForeignOrigin),
            ("http://127.0.0.1%3A21811/keys", FetchError::InvalidUrl),
            (
                "http://%31%32%37.0.0.1:21811/keys",
                FetchError::ForeignOrigin,
            ),
            ("http://127.0.0.2:21810/keys", FetchError::ForeignOrigin),
            ("/keys", FetchError::InvalidUrl),
            ("", FetchError::InvalidUrl),
        ];
        for (url, expected) in cases {
            match p.check(url) {
                Ok(u) => panic!("{url:?} allowed as {u}"),
                Err(e) => assert_eq!(
                    std::mem::discriminant(&e),
                    std::mem::discriminant(&expected),
                    "{url:?}: {e:?}"
                ),
            }
        }
    }

    #[test]
    fn policy_refuses_a_downgrade_from_https() {
        let p = policy("https://idp.example");
        assert!(matches!(
            p.check("http://idp.example/keys"),
            Err(FetchError::Downgrade)
        ));
        assert!(matches!(
            p.check("http://idp.example:443/keys"),
            Err(FetchError::Downgrade)
        ));
        assert!(matches!(
            p.check("https://keys.example/jwks"),
            Err(FetchError::ForeignOrigin)
        ));
        assert!(matches!(
            p.check("https://idp.example:8443/jwks"),
            Err(FetchError::ForeignOrigin)
        ));
    }

    #[test]
    fn configured_urls_are_checked_by_the_same_parser() {
        assert_eq!(check_fetch_url("https://idp.example/jwks"), Ok(()));
        assert_eq!(
            check_fetch_url("https://u:p@idp.example/jwks").unwrap_err(),
            "url carries credentials (userinfo)"
        );
        assert_eq!(
            check_fetch_url("ldap://idp.example").unwrap_err(),
            "url scheme is not http or https"
        );
        assert_eq!(
            check_fetch_url("https://[::1/").unwrap_err(),
            "url is not a valid absolute url"
        );
    }

    #[test]
    fn a_configuration_naming_no_fetchable_url_has_no_policy() {
        for bad in [
            "corp",
            "ftp://idp.example",
            "https://u:p@idp.example",
            "https://",
        ] {
            assert!(OutboundPolicy::allowing(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn logged_urls_carry_no_credentials() {
        assert_eq!(
            loggable_url("https://user:pw@idp.example:8443/keys?token=x#f"),
            "https://idp.example:8443/keys"
        );
        assert_eq!(loggable_url("not a url"), "(invalid url)");
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/jwk-set+json"));
        assert!(!is_json("text/html"));
        assert!(!is_json("text/plain+json"));
        assert!(!is_json(""));
    }
}
