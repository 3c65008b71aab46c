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
use tslm_protocol::SUBPROTOCOL_V1;
use tslm_protocol::v1::{self, ReplyOk, ServerMessage, WireError};

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
    /// A listener token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
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

/// A protocol v1 connection. Requests may be issued concurrently from `&self`; deliveries are read
/// with [`Client::next_delivery`].
pub struct Client {
    cmds: mpsc::Sender<Cmd>,
    deliveries: mpsc::Receiver<Delivery>,
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
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let proto = resp.headers().get("Sec-WebSocket-Protocol");
        if proto.map(|p| p.as_bytes()) != Some(SUBPROTOCOL_V1.as_bytes()) {
            return Err(ClientError::Connect(format!(
                "the server did not accept subprotocol {SUBPROTOCOL_V1}"
            )));
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (del_tx, del_rx) = mpsc::channel(1024);
        let (closed_tx, closed_rx) = oneshot::channel();
        tokio::spawn(drive(ws, cmd_rx, del_tx, closed_tx));
        Ok(Self {
            cmds: cmd_tx,
            deliveries: del_rx,
            closed: closed_rx,
            close_info: None,
            next_id: AtomicU64::new(1),
        })
    }

    async fn request(
        &self,
        op: &str,
        channel: Option<&str>,
        data: Option<&str>,
    ) -> Result<ReplyOk, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut text = format!("{{\"op\":\"{op}\",\"id\":{id}");
        if let Some(c) = channel {
            text.push_str(",\"channel\":");
            text.push_str(&serde_json::Value::String(c.to_owned()).to_string());
        }
        if let Some(d) = data {
            text.push_str(",\"data\":");
            text.push_str(d);
        }
        text.push('}');
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Request {
                id,
                text,
                reply: tx,
            })
            .await
            .map_err(|_| ClientError::Closed(None))?;
        rx.await.map_err(|_| ClientError::Closed(None))?
    }

    /// Creates a channel; `Ok(false)` when it already existed.
    pub async fn create(&self, channel: &str) -> Result<bool, ClientError> {
        Ok(self
            .request("create", Some(channel), None)
            .await?
            .created
            .unwrap_or(false))
    }

    /// Publishes one JSON value (given as JSON text) and returns its offset.
    pub async fn publish_json(&self, channel: &str, json: &str) -> Result<u64, ClientError> {
        let raw: &serde_json::value::RawValue = serde_json::from_str(json)
            .map_err(|e| ClientError::Invalid(format!("data is not JSON: {e}")))?;
        let reply = self
            .request("publish", Some(channel), Some(raw.get()))
            .await?;
        reply
            .offset
            .ok_or_else(|| ClientError::Protocol("publish reply without offset".into()))
    }

    /// Publishes a string.
    pub async fn publish_text(&self, channel: &str, text: &str) -> Result<u64, ClientError> {
        self.publish_json(
            channel,
            &serde_json::Value::String(text.to_owned()).to_string(),
        )
        .await
    }

    pub async fn subscribe(&self, channel: &str) -> Result<(), ClientError> {
        self.request("subscribe", Some(channel), None)
            .await
            .map(drop)
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        self.request("unsubscribe", Some(channel), None)
            .await
            .map(drop)
    }

    pub async fn ping(&self) -> Result<(), ClientError> {
        self.request("ping", None, None).await.map(drop)
    }

    /// The next delivery; `Err(Closed(..))` with the server's close code once the connection ends.
    pub async fn next_delivery(&mut self) -> Result<Delivery, ClientError> {
        if let Some(d) = self.deliveries.recv().await {
            return Ok(d);
        }
        if self.close_info.is_none() {
            self.close_info = Some((&mut self.closed).await.unwrap_or(None));
        }
        Err(ClientError::Closed(self.close_info.clone().flatten()))
    }

    /// Closes the connection (code 1000) and waits for the server's answer.
    pub async fn close(mut self) {
        let _ = self.cmds.send(Cmd::Close).await;
        while self.deliveries.recv().await.is_some() {}
    }
}

async fn drive<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    mut cmds: mpsc::Receiver<Cmd>,
    deliveries: mpsc::Sender<Delivery>,
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
                    Ok(ServerMessage::Message { channel, offset, data }) => {
                        if deliveries.send(Delivery { channel, offset, data }).await.is_err() {
                            // Nobody reads deliveries any more; keep serving replies.
                        }
                    }
                    Ok(ServerMessage::Reply(r)) => {
                        let id = r.id.as_ref().and_then(serde_json::Value::as_u64);
                        if let Some(tx) = id.and_then(|id| pending.remove(&id)) {
                            let _ = tx.send(r.result.map_err(ClientError::Server));
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
