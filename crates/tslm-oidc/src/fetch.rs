//! Fetching an issuer's key set over HTTP(S): only from configured URLs (the discovery document
//! and its `jwks_uri`, or `jwks_url`), with a timeout, a size cap, no redirects and no proxy.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Deserialize;

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
    #[error("discovery jwks_uri is not https while the issuer is")]
    InsecureJwksUri,
    #[error(
        "discovery jwks_uri is on another host than the issuer (configure `jwks_url` to name it)"
    )]
    ForeignJwksUri,
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
        let jwks_url = match &issuer.keys {
            KeySource::Secret(_) => {
                return Err(FetchFailure {
                    document: "key set",
                    url: String::new(),
                    error: FetchError::NothingToFetch,
                });
            }
            KeySource::JwksUrl(url) => url.clone(),
            KeySource::Discovery => {
                let url = discovery_url(&issuer.issuer);
                let at = |error| FetchFailure::new("discovery document", &url, error);
                let doc = get_json(client, &url, issuer).await.map_err(at)?;
                jwks_uri(&doc, &issuer.issuer).map_err(at)?
            }
        };
        let at = |error| FetchFailure::new("key set", &jwks_url, error);
        let doc = get_json(client, &jwks_url, issuer).await.map_err(at)?;
        KeySet::parse(&doc).map_err(|e| at(e.into()))
    }
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
    match reqwest::Url::parse(url) {
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

/// The `jwks_uri` of a discovery document whose `issuer` is exactly `expected_issuer`.
pub(crate) fn jwks_uri(document: &[u8], expected_issuer: &str) -> Result<String, FetchError> {
    let doc: Discovery = serde_json::from_slice(document).map_err(|_| FetchError::BadDiscovery)?;
    if doc.issuer != expected_issuer {
        return Err(FetchError::IssuerMismatch);
    }
    let scheme = |url: &str| url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if scheme(expected_issuer).as_deref() == Some("https")
        && scheme(&doc.jwks_uri).as_deref() != Some("https")
    {
        return Err(FetchError::InsecureJwksUri);
    }
    // The gateway connects only where its config says: the issuer's own host. A key set
    // elsewhere must be named in the config (`jwks_url`), never taken from a document.
    let authority = |url: &str| {
        url.split_once("://").map(|(_, rest)| {
            rest.split(['/', '?', '#'])
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
    };
    if authority(expected_issuer).is_none()
        || authority(expected_issuer) != authority(&doc.jwks_uri)
    {
        return Err(FetchError::ForeignJwksUri);
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

/// GET `url`; require 200 and a JSON content type; read at most `max_document_bytes` (the body
/// is streamed and the read stops past the cap, whatever `Content-Length` says).
async fn get_json(
    client: &reqwest::Client,
    url: &str,
    issuer: &Issuer,
) -> Result<Vec<u8>, FetchError> {
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
        let elsewhere =
            br#"{"issuer": "https://idp.example/", "jwks_uri": "https://keys.example/jwks"}"#;
        assert!(matches!(
            jwks_uri(elsewhere, "https://idp.example/"),
            Err(FetchError::ForeignJwksUri)
        ));
        let other_port =
            br#"{"issuer": "https://idp.example/", "jwks_uri": "https://idp.example:8443/jwks"}"#;
        assert!(matches!(
            jwks_uri(other_port, "https://idp.example/"),
            Err(FetchError::ForeignJwksUri)
        ));
        assert!(matches!(
            jwks_uri(doc, "https://idp.example"),
            Err(FetchError::IssuerMismatch)
        ));
        assert!(matches!(
            jwks_uri(b"{\"issuer\": \"x\"}", "x"),
            Err(FetchError::BadDiscovery)
        ));
        let downgrade =
            br#"{"issuer": "https://idp.example", "jwks_uri": "http://idp.example/jwks"}"#;
        assert!(matches!(
            jwks_uri(downgrade, "https://idp.example"),
            Err(FetchError::InsecureJwksUri)
        ));
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
