//! A small async client for TSLM's protocol v1, used by the `tslm` CLI and the tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tslm_client::ClientError> {
//! let publisher = tslm_client::Client::connect("ws://127.0.0.1:8081").await?;
//! publisher.create("prices").await?;
//! let offset = publisher.publish_json("prices", r#"{"sym":"BTC","px":101.5}"#).await?;
//! # let _ = offset; Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tslm_protocol::v1::{self, ReplyOk, ServerMessage, WireError};
use tslm_protocol::{ChannelOptions, SUBPROTOCOL_V1, Start};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the server refused the request: {0}")]
    Server(#[from] WireError),
    #[error("connection closed{}", .0.as_ref().map(|(c, r)| format!(" by the server with code {c}: {r}")).unwrap_or_default())]
    Closed(Option<(u16, String)>),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("unexpected message from the server: {0}")]
    Protocol(String),
    /// [`Client::next_delivery`] met an event that is not a message (a gap, a closed
    /// subscription or a reply); the event is returned so that nothing is silently lost.
    #[error("expected a message, received {}", event_kind(.0))]
    NotAMessage(Box<ServerMessage>),
}

fn event_kind(m: &ServerMessage) -> String {
    match m {
        ServerMessage::Message { channel, .. } => format!("a message on {channel}"),
        ServerMessage::Gap { channel, from, to } => {
            format!("a gap on {channel} (offsets {from} to {to} missed)")
        }
        ServerMessage::Closed { channel, reason } => {
            format!("the end of the subscription to {channel} ({reason})")
        }
        ServerMessage::ReplyEvent {
            channel, offset, ..
        } => format!("a reply to message {offset} of {channel}"),
        ServerMessage::Reply(_) => "a reply".to_owned(),
    }
}

/// A message delivered on a subscribed channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub channel: String,
    pub offset: u64,
    /// The published JSON value, as text.
    pub data: String,
}

/// Connection options.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// A token sent as `Authorization: Bearer`: a listener's shared token (`auth_tokens`), a
    /// publisher's token, or a subscriber's access token.
    pub token: Option<String>,
    /// Authenticate as this publisher with its Ed25519 key right after connecting (challenge,
    /// then signature).
    pub key: Option<(String, tslm_auth::keys::SecretKey)>,
    /// TLS settings for `wss://` URLs (see [`tls_config`]); `None`: the system's CA certificates
    /// and no client certificate.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// A TLS client configuration for `wss://` URLs: trusting the CA certificates of the PEM file
/// `ca` (or the system's when `None`), and presenting the client certificate chain and key of
/// `client` (PEM files) to listeners that require mutual TLS.
pub fn tls_config(
    ca: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        ClientError::Invalid(format!("{}: {e}", what.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(path, &e))? {
                let cert = cert.map_err(|e| invalid(path, &e))?;
                roots.add(cert).map_err(|e| invalid(path, &e))?;
            }
            if roots.is_empty() {
                return Err(invalid(path, &"no CA certificate found"));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Invalid(e.to_string()))?
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| invalid(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| invalid(cert, &e))?
        }
    };
    Ok(std::sync::Arc::new(config))
}

type Pending = oneshot::Sender<Result<ReplyOk, ClientError>>;

enum Cmd {
    Request {
        id: u64,
        text: String,
        reply: Pending,
    },
    Close,
}

/// A request under construction: `{"op":…,"id":…` then fields, each key written once. Strings are
/// escaped by serde_json; `data` is JSON text the caller validated.
struct RequestText(String);

impl RequestText {
    fn new(op: &str, id: u64) -> Self {
        Self(format!("{{\"op\":\"{op}\",\"id\":{id}"))
    }

    fn raw(mut self, key: &str, json: &str) -> Self {
        self.0.push_str(",\"");
        self.0.push_str(key);
        self.0.push_str("\":");
        self.0.push_str(json);
        self
    }

    fn string(self, key: &str, value: &str) -> Self {
        let quoted = serde_json::Value::String(value.to_owned()).to_string();
        self.raw(key, &quoted)
    }

    fn number(self, key: &str, value: u64) -> Self {
        self.raw(key, &value.to_string())
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// Checks that `json` is one JSON value and returns it without surrounding whitespace.
fn json_value<'a>(what: &str, json: &'a str) -> Result<&'a str, ClientError> {
    let raw: &serde_json::value::RawValue = serde_json::from_str(json)
        .map_err(|e| ClientError::Invalid(format!("{what} is not JSON: {e}")))?;
    Ok(raw.get())
}

/// A protocol v1 connection. Requests may be issued concurrently from `&self`; what the server
/// sends besides replies is read with [`Client::next_event`] (everything) or
/// [`Client::next_delivery`] (messages only).
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<ServerMessage>,
    closed: oneshot::Receiver<Option<(u16, String)>>,
    close_info: Option<Option<(u16, String)>>,
    next_id: AtomicU64,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    pub async fn connect_with(url: &str, opts: ConnectOptions) -> Result<Self, ClientError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL_V1),
        );
        if let Some(t) = &opts.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| ClientError::Invalid("token is not a valid header value".into()))?;
            req.headers_mut().insert("Authorization", v);
        }
        let connector = if req.uri().scheme_str() == Some("wss") {
            let tls = match &opts.tls {
                Some(t) => std::sync::Arc::clone(t),
                None => tls_config(None, None)?,
            };
            Some(tokio_tungstenite::Connector::Rustls(tls))
        } else {
            None
        };
        let (ws, resp) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector)
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
        let proto = resp.headers().get("Sec-WebSocket-Protocol");
        if proto.map(|p| p.as_bytes()) != Some(SUBPROTOCOL_V1.as_bytes()) {
            return Err(ClientError::Connect(format!(
                "the server did not accept subprotocol {SUBPROTOCOL_V1}"
            )));
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (event_tx, event_rx) = mpsc::channel(1024);
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(drive(ws, cmd_rx, event_tx, closed_tx));
        let client = Self {
            cmds: cmd_tx,
            events: event_rx,
            closed: closed_rx,
            close_info: None,
            next_id: AtomicU64::new(1),
        };
        if let Some((publisher, key)) = &opts.key {
            client.auth_key(publisher, key).await?;
        }
        Ok(client)
    }

    /// Authenticates with a bearer token (`auth` op): a publisher's token or a subscriber's
    /// access token.
    pub async fn auth_token(&self, token: &str) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        self.send(id, RequestText::new("auth", id).string("token", token))
            .await
    }

    /// Authenticates as `publisher` by signing a fresh challenge with its key.
    pub async fn auth_key(
        &self,
        publisher: &str,
        key: &tslm_auth::keys::SecretKey,
    ) -> Result<ReplyOk, ClientError> {
        let challenge = self.request("challenge", None).await?.challenge;
        let challenge = challenge
            .as_deref()
            .and_then(tslm_auth::keys::Challenge::from_base64)
            .ok_or_else(|| ClientError::Protocol("challenge reply without a challenge".into()))?;
        let message = tslm_auth::keys::challenge_message(publisher, &challenge);
        let signature = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(key.sign(&message))
        };
        let id = self.next_id();
        self.send(
            id,
            RequestText::new("auth", id)
                .string("publisher", publisher)
                .string("signature", &signature),
        )
        .await
    }

    /// Replaces this connection's access token with a fresh one (`refresh` op).
    pub async fn refresh(&self, token: &str) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        self.send(id, RequestText::new("refresh", id).string("token", token))
            .await
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A request with an optional `channel` and no other fields.
    async fn request(&self, op: &str, channel: Option<&str>) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        let mut text = RequestText::new(op, id);
        if let Some(c) = channel {
            text = text.string("channel", c);
        }
        self.send(id, text).await
    }

    async fn send(&self, id: u64, text: RequestText) -> Result<ReplyOk, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request {
                id,
                text: text.finish(),
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed(None))?;
        rx.await.map_err(|_| ClientError::Closed(None))?
    }

    /// Creates a channel; `Ok(false)` when it already existed.
    pub async fn create(&self, channel: &str) -> Result<bool, ClientError> {
        Ok(self
            .request("create", Some(channel))
            .await?
            .created
            .unwrap_or(false))
    }

    /// Creates a channel with options lowering its class's limits; the reply carries `created`
    /// and the channel's `epoch`.
    pub async fn create_with(
        &self,
        channel: &str,
        options: &ChannelOptions,
    ) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        let text = RequestText::new("create", id)
            .string("channel", channel)
            .raw("options", &v1::options_json(options));
        self.send(id, text).await
    }

    /// Deletes a channel; its subscribers receive a `closed` event.
    pub async fn delete(&self, channel: &str) -> Result<ReplyOk, ClientError> {
        self.request("delete", Some(channel)).await
    }

    async fn publish_request(
        &self,
        channel: &str,
        json: &str,
        msg_id: Option<&str>,
    ) -> Result<ReplyOk, ClientError> {
        let data = json_value("data", json)?;
        let id = self.next_id();
        let mut text = RequestText::new("publish", id)
            .string("channel", channel)
            .raw("data", data);
        if let Some(m) = msg_id {
            text = text.string("msg_id", m);
        }
        self.send(id, text).await
    }

    /// Publishes one JSON value (given as JSON text) and returns its offset.
    pub async fn publish_json(&self, channel: &str, json: &str) -> Result<u64, ClientError> {
        self.publish_request(channel, json, None)
            .await?
            .offset
            .ok_or_else(|| ClientError::Protocol("publish reply without offset".into()))
    }

    /// Publishes one JSON value with a `msg_id`: if the channel saw that `msg_id` recently, the
    /// message is not published again and the reply says `duplicate` (with the first offset).
    pub async fn publish_with_id(
        &self,
        channel: &str,
        data_json: &str,
        msg_id: &str,
    ) -> Result<ReplyOk, ClientError> {
        self.publish_request(channel, data_json, Some(msg_id)).await
    }

    /// Publishes a string.
    pub async fn publish_text(&self, channel: &str, text: &str) -> Result<u64, ClientError> {
        self.publish_json(
            channel,
            &serde_json::Value::String(text.to_owned()).to_string(),
        )
        .await
    }

    /// Subscribes to new messages.
    pub async fn subscribe(&self, channel: &str) -> Result<(), ClientError> {
        self.request("subscribe", Some(channel)).await.map(drop)
    }

    /// Subscribes from `start`; the reply carries the channel's `epoch`, `offset` and the
    /// subscription's `from` (and, for a resume, `recovered` and `lost`).
    pub async fn subscribe_from(
        &self,
        channel: &str,
        start: Start,
    ) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        let text = RequestText::new("subscribe", id)
            .string("channel", channel)
            .raw("start", &v1::start_json(start));
        self.send(id, text).await
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        self.request("unsubscribe", Some(channel)).await.map(drop)
    }

    /// Reads up to `limit` (1 to 1000) backlog messages from `start` without subscribing; the
    /// reply carries `messages` and `more`.
    pub async fn history(
        &self,
        channel: &str,
        start: Start,
        limit: usize,
    ) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        let text = RequestText::new("history", id)
            .string("channel", channel)
            .raw("start", &v1::start_json(start))
            .number("limit", limit as u64);
        self.send(id, text).await
    }

    /// Sends a reply (JSON text) to the publisher of message `offset` of `channel`.
    pub async fn reply(
        &self,
        channel: &str,
        offset: u64,
        data_json: &str,
    ) -> Result<ReplyOk, ClientError> {
        let data = json_value("data", data_json)?;
        let id = self.next_id();
        let text = RequestText::new("reply", id)
            .string("channel", channel)
            .number("offset", offset)
            .raw("data", data);
        self.send(id, text).await
    }

    /// Lists the first page of channels (those starting with `prefix`, if given); the reply
    /// carries `channels` and `more`.
    pub async fn channels(&self, prefix: Option<&str>) -> Result<ReplyOk, ClientError> {
        self.channels_page(prefix, None, None).await
    }

    /// Lists channels named strictly after `after` (the last name of the previous page), at most
    /// `limit` of them (the server's default when `None`).
    pub async fn channels_page(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ReplyOk, ClientError> {
        let id = self.next_id();
        let mut text = RequestText::new("channels", id);
        if let Some(p) = prefix {
            text = text.string("prefix", p);
        }
        if let Some(a) = after {
            text = text.string("after", a);
        }
        if let Some(l) = limit {
            text = text.number("limit", l as u64);
        }
        self.send(id, text).await
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request("ping", None).await.map(drop)
    }

    /// The next event: a message, a gap, a closed subscription or a reply to one of this
    /// connection's messages (never a [`ServerMessage::Reply`]); `Err(Closed(..))` with the
    /// server's close code once the connection ends.
    pub async fn next_event(&mut self) -> Result<ServerMessage, ClientError> {
        if let Some(e) = self.events.recv().await {
            return Ok(e);
        }
        if self.close_info.is_none() {
            self.close_info = Some((&mut self.closed).await.unwrap_or(None));
        }
        Err(ClientError::Closed(self.close_info.clone().flatten()))
    }

    /// The next delivery; `Err(Closed(..))` with the server's close code once the connection ends,
    /// and `Err(NotAMessage(event))` if the next event is not a message (use
    /// [`Client::next_event`] to handle gaps, closed subscriptions and replies).
    pub async fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        match self.next_event().await? {
            ServerMessage::Message {
                channel,
                offset,
                data,
            } => Ok(Delivery {
                channel,
                offset,
                data,
            }),
            other => Err(ClientError::NotAMessage(Box::new(other))),
        }
    }

    /// Closes the connection (code 1000) and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.cmds.send(Cmd::Close).await;
        while self.events.recv().await.is_some() {}
    }
}

async fn drive<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<ServerMessage>,
    closed: oneshot::Sender<Option<(u16, String)>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut close_info = None;
    let mut closing = false;
    loop {
        tokio::select! {
            cmd = cmds.recv(), if !closing => match cmd {
                Some(Cmd::Request { id, text, reply }) => {
                    if sink.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                        let _ = reply.send(Err(ClientError::Closed(None)));
                        break;
                    }
                    pending.insert(id, reply);
                }
                Some(Cmd::Close) | None => {
                    closing = true;
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000.into(), reason: "".into() }))).await;
                }
            },
            msg = stream.next() => match msg {
                None | Some(Err(_)) => break,
                Some(Ok(Message::Close(frame))) => {
                    close_info = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(Message::Text(text))) => match v1::decode_server_message(text.as_str()) {
                    Ok(ServerMessage::Reply(r)) => {
                        let id = r.id.as_ref().and_then(serde_json::Value::as_u64);
                        if let Some(tx) = id.and_then(|id| pending.remove(&id)) {
                            let _ = tx.send(r.result.map_err(ClientError::Server));
                        }
                    }
                    Ok(event) => {
                        if events.send(event).await.is_err() {
                            // Nobody reads events any more; keep serving replies.
                        }
                    }
                    Err(e) => tracing_free_log(&format!("undecodable server message: {e}")),
                },
                Some(Ok(_)) => {}
            },
        }
    }
    for (_, tx) in pending.drain() {
        let _ = tx.send(Err(ClientError::Closed(close_info.clone())));
    }
    let _ = closed.send(close_info);
}

fn tracing_free_log(msg: &str) {
    eprintln!("tslm-client: {msg}");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::Future;

    use bytes::Bytes;
    use tslm_protocol::v1::{Id, Op};
    use tslm_protocol::{ChannelName, Epoch, Offset};

    use super::*;

    /// A client with no socket: the test plays the driver.
    fn client() -> (Client, mpsc::Receiver<Cmd>, mpsc::Sender<ServerMessage>) {
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let (event_tx, event_rx) = mpsc::channel(4);
        let (_closed_tx, closed_rx) = oneshot::channel();
        let c = Client {
            cmds: cmd_tx,
            events: event_rx,
            closed: closed_rx,
            close_info: None,
            next_id: AtomicU64::new(1),
        };
        (c, cmd_rx, event_tx)
    }

    /// Runs `call`, decodes the request it sends with the server's decoder and answers `ok`.
    async fn request_of<T>(
        cmds: &mut mpsc::Receiver<Cmd>,
        call: impl Future<Output = Result<T, ClientError>>,
    ) -> (Op, Result<T, ClientError>) {
        let serve = async {
            let Some(Cmd::Request { id, text, reply }) = cmds.recv().await else {
                panic!("no request");
            };
            let req = v1::decode_request(&Bytes::from(text.clone()))
                .unwrap_or_else(|e| panic!("{text} -> {e:?}"));
            assert_eq!(req.id, Some(Id::number(id)), "{text}");
            let _ = reply.send(Ok(ReplyOk {
                created: Some(true),
                offset: Some(3),
                ..ReplyOk::default()
            }));
            req.op
        };
        let (op, result) = tokio::join!(serve, call);
        (op, result)
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[tokio::test]
    async fn every_request_decodes_as_the_server_reads_it() {
        let (c, mut cmds, _events) = client();
        let (op, r) = request_of(&mut cmds, c.create("a")).await;
        assert_eq!(
            (op, r.unwrap()),
            (
                Op::Create {
                    channel: ch("a"),
                    options: ChannelOptions::default()
                },
                true
            )
        );
        let options = ChannelOptions {
            backlog_messages: Some(5),
            replies: Some(true),
            ..ChannelOptions::default()
        };
        let (op, _) = request_of(&mut cmds, c.create_with("a", &options)).await;
        assert_eq!(
            op,
            Op::Create {
                channel: ch("a"),
                options
            }
        );
        let (op, _) = request_of(&mut cmds, c.delete("a")).await;
        assert_eq!(op, Op::Delete { channel: ch("a") });
        let (op, r) = request_of(&mut cmds, c.publish_json("a", " {\"x\": 1} ")).await;
        assert_eq!(r.unwrap(), 3);
        match op {
            Op::Publish { data, msg_id, .. } => {
                assert_eq!((&data.json()[..], msg_id), (&b"{\"x\": 1}"[..], None));
            }
            other => panic!("{other:?}"),
        }
        let (op, _) = request_of(&mut cmds, c.publish_text("a", "say \"hi\"\n")).await;
        match op {
            Op::Publish { data, .. } => assert_eq!(&data.json()[..], br#""say \"hi\"\n""#),
            other => panic!("{other:?}"),
        }
        let (op, _) = request_of(&mut cmds, c.publish_with_id("a", "[1]", "m-\"1\"")).await;
        match op {
            Op::Publish { data, msg_id, .. } => {
                assert_eq!(&data.json()[..], b"[1]");
                assert_eq!(msg_id.as_deref(), Some("m-\"1\""));
            }
            other => panic!("{other:?}"),
        }
        let (op, _) = request_of(&mut cmds, c.subscribe("a")).await;
        assert_eq!(
            op,
            Op::Subscribe {
                channel: ch("a"),
                start: Start::New
            }
        );
        let resume = Start::After {
            epoch: Epoch(0xab),
            offset: Offset(0),
        };
        let (op, _) = request_of(&mut cmds, c.subscribe_from("a", resume)).await;
        assert_eq!(
            op,
            Op::Subscribe {
                channel: ch("a"),
                start: resume
            }
        );
        let (op, _) = request_of(&mut cmds, c.unsubscribe("a")).await;
        assert_eq!(op, Op::Unsubscribe { channel: ch("a") });
        let (op, _) = request_of(&mut cmds, c.history("a", Start::Last(4), 10)).await;
        assert_eq!(
            op,
            Op::History {
                channel: ch("a"),
                start: Start::Last(4),
                limit: 10
            }
        );
        let (op, _) = request_of(&mut cmds, c.reply("a", 9, "{\"ok\":true}")).await;
        match op {
            Op::Reply {
                channel,
                offset,
                data,
            } => {
                assert_eq!((channel, offset), (ch("a"), Offset(9)));
                assert_eq!(&data.json()[..], b"{\"ok\":true}");
            }
            other => panic!("{other:?}"),
        }
        let (op, _) = request_of(&mut cmds, c.channels(Some("ne\"ws"))).await;
        assert_eq!(
            op,
            Op::Channels {
                prefix: Some("ne\"ws".into()),
                after: None,
                limit: v1::DEFAULT_LIMIT
            }
        );
        let (op, _) = request_of(&mut cmds, c.channels_page(None, Some("b"), Some(2))).await;
        assert_eq!(
            op,
            Op::Channels {
                prefix: None,
                after: Some(ch("b")),
                limit: 2
            }
        );
        let (op, _) = request_of(&mut cmds, c.ping()).await;
        assert_eq!(op, Op::Ping);
    }

    #[tokio::test]
    async fn invalid_json_data_is_refused_before_sending() {
        let (c, _cmds, _events) = client();
        for r in [
            c.publish_json("a", "{").await.map(drop),
            c.publish_with_id("a", "1 2", "m").await.map(drop),
            c.reply("a", 1, "").await.map(drop),
        ] {
            assert!(matches!(r, Err(ClientError::Invalid(_))), "{r:?}");
        }
    }

    #[tokio::test]
    async fn next_delivery_refuses_to_skip_other_events() {
        let (mut c, _cmds, events) = client();
        let gap = ServerMessage::Gap {
            channel: "a".into(),
            from: 2,
            to: 3,
        };
        events
            .send(ServerMessage::Message {
                channel: "a".into(),
                offset: 1,
                data: "1".into(),
            })
            .await
            .unwrap();
        events.send(gap.clone()).await.unwrap();
        events
            .send(ServerMessage::Closed {
                channel: "a".into(),
                reason: "deleted".into(),
            })
            .await
            .unwrap();
        assert_eq!(c.next_delivery().await.unwrap().offset, 1);
        match c.next_delivery().await {
            Err(ClientError::NotAMessage(e)) => assert_eq!(*e, gap),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.next_event().await.unwrap(),
            ServerMessage::Closed { .. }
        ));
        drop(events);
        assert!(matches!(
            c.next_event().await,
            Err(ClientError::Closed(None))
        ));
    }
}
