//! The client commands: `sub`, `pub`, `create`, `history`, `delete`, `channels`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tslm_client::{Client, ClientError, ConnectOptions};
use tslm_protocol::v1::{ReplyOk, ServerMessage};
use tslm_protocol::{Epoch, Offset, Start};

#[derive(Args, Clone)]
pub(crate) struct AuthArgs {
    /// A token sent as `Authorization: Bearer`: a listener's shared token, a publisher's token
    /// or a subscriber's access token; also read from TSLM_TOKEN.
    #[arg(long, env = "TSLM_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Authenticate as this publisher (with --key).
    #[arg(long, env = "TSLM_PUBLISHER", requires = "key")]
    pub(crate) publisher: Option<String>,
    /// The publisher's secret key file, as written by `tslm keygen`.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_KEY_FILE",
        requires = "publisher"
    )]
    pub(crate) key: Option<PathBuf>,
    /// wss://: trust the CA certificates of this PEM file instead of the system's.
    #[arg(long, value_name = "FILE", env = "TSLM_CA_FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// wss://: present this client certificate chain (PEM) to a mutual-TLS listener.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_CERT_FILE",
        requires = "cert_key"
    )]
    pub(crate) cert: Option<PathBuf>,
    /// wss://: the private key (PEM) of --cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_CERT_KEY_FILE",
        requires = "cert"
    )]
    pub(crate) cert_key: Option<PathBuf>,
}

impl AuthArgs {
    fn options(&self) -> Result<ConnectOptions, ExitCode> {
        let key = match (&self.publisher, &self.key) {
            (Some(p), Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    eprintln!("error: cannot read key file {}: {e}", file.display());
                    ExitCode::FAILURE
                })?;
                let key = tslm_auth::keys::SecretKey::parse(&text).ok_or_else(|| {
                    eprintln!(
                        "error: {} is not a key file written by `tslm keygen`",
                        file.display()
                    );
                    ExitCode::FAILURE
                })?;
                Some((p.clone(), key))
            }
            _ => None,
        };
        let tls = if self.ca.is_some() || self.cert.is_some() {
            let client = self.cert.as_deref().zip(self.cert_key.as_deref());
            Some(
                tslm_client::tls_config(self.ca.as_deref(), client).map_err(|e| {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                })?,
            )
        } else {
            None
        };
        Ok(ConnectOptions {
            token: self.token.clone(),
            key,
            tls,
        })
    }
}

/// `new`, `oldest`, `last:N` or `EPOCH:OFFSET`.
pub(crate) fn parse_start(s: &str) -> Result<Start, String> {
    match s {
        "new" => return Ok(Start::New),
        "oldest" => return Ok(Start::Oldest),
        _ => {}
    }
    if let Some(n) = s.strip_prefix("last:") {
        return match n.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Start::Last(n)),
            _ => Err(format!("`last:N` needs N >= 1, got `{n}`")),
        };
    }
    let (epoch, offset) = s
        .split_once(':')
        .ok_or("expected new, oldest, last:N or EPOCH:OFFSET")?;
    let epoch = Epoch::parse(epoch).ok_or("an epoch is 16 hexadecimal digits")?;
    let offset = offset
        .parse::<u64>()
        .map_err(|_| format!("bad offset `{offset}`"))?;
    Ok(Start::After {
        epoch,
        offset: Offset(offset),
    })
}

/// Connects a client with the command's credentials and TLS options; on failure, says why.
pub(crate) async fn connect(url: &str, auth: &AuthArgs) -> Result<Client, ExitCode> {
    let opts = auth.options()?;
    Client::connect_with(url, opts).await.map_err(fail)
}

pub(crate) fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

pub(crate) fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One line on stderr describing where a subscription starts (so a later run can resume).
pub(crate) fn describe_subscription(channel: &str, ok: &ReplyOk) -> String {
    let mut line = format!(
        "{{\"subscribed\":{},\"epoch\":{},\"offset\":{},\"from\":{}",
        json_str(channel),
        json_str(ok.epoch.as_deref().unwrap_or("")),
        ok.offset.unwrap_or(0),
        ok.from.unwrap_or(0)
    );
    if let Some(r) = ok.recovered {
        line.push_str(&format!(",\"recovered\":{r}"));
    }
    if let Some(lost) = &ok.lost {
        line.push_str(&format!(
            ",\"lost\":{{\"reason\":{}",
            json_str(&lost.reason)
        ));
        if let (Some(f), Some(t)) = (lost.from, lost.to) {
            line.push_str(&format!(",\"from\":{f},\"to\":{t}"));
        }
        line.push('}');
    }
    line.push('}');
    line
}

pub(crate) async fn sub(
    url: &str,
    channels: &[String],
    count: Option<u64>,
    start: Start,
    auth: &AuthArgs,
) -> ExitCode {
    let mut client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    for ch in channels {
        match client.subscribe_from(ch, start).await {
            Ok(ok) => eprintln!("{}", describe_subscription(ch, &ok)),
            Err(e) => {
                eprintln!("error: subscribe {ch}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Every event is printed: a gap or a closed channel is never skipped silently.
    let mut open = channels
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len();
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        match client.next_event().await {
            Ok(ServerMessage::Message {
                channel,
                offset,
                data,
            }) => {
                println!(
                    "{{\"channel\":{},\"offset\":{offset},\"data\":{data}}}",
                    json_str(&channel)
                );
                seen += 1;
            }
            Ok(ServerMessage::Gap { channel, from, to }) => {
                println!(
                    "{{\"event\":\"gap\",\"channel\":{},\"from\":{from},\"to\":{to}}}",
                    json_str(&channel)
                );
            }
            Ok(ServerMessage::Closed { channel, reason }) => {
                println!(
                    "{{\"event\":\"closed\",\"channel\":{},\"reason\":{}}}",
                    json_str(&channel),
                    json_str(&reason)
                );
                open = open.saturating_sub(1);
                if open == 0 {
                    eprintln!("error: no subscription left (the last channel closed: {reason})");
                    client.close().await;
                    return ExitCode::FAILURE;
                }
            }
            Ok(_) => {}
            Err(e) => return fail(e),
        }
    }
    client.close().await;
    ExitCode::SUCCESS
}

pub(crate) async fn history(
    url: &str,
    channel: &str,
    start: Start,
    limit: usize,
    auth: &AuthArgs,
) -> ExitCode {
    let client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let status = match client.history(channel, start, limit).await {
        Ok(ok) => {
            eprintln!("{}", describe_subscription(channel, &ok));
            for m in ok.messages.unwrap_or_default() {
                println!(
                    "{{\"channel\":{},\"offset\":{},\"data\":{}}}",
                    json_str(channel),
                    m.offset,
                    m.data
                );
            }
            if ok.more == Some(true) {
                eprintln!("more messages follow: raise --limit or start after the last offset");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    client.close().await;
    status
}

pub(crate) async fn delete(url: &str, channel: &str, auth: &AuthArgs) -> ExitCode {
    let client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let status = match client.delete(channel).await {
        Ok(_) => {
            println!("deleted {channel}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    client.close().await;
    status
}

pub(crate) async fn list_channels(url: &str, prefix: Option<&str>, auth: &AuthArgs) -> ExitCode {
    let client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut after: Option<String> = None;
    let status = loop {
        match client
            .channels_page(prefix, after.as_deref(), Some(1000))
            .await
        {
            Ok(ok) => {
                let list = ok.channels.unwrap_or_default();
                for c in &list {
                    println!(
                        "{{\"channel\":{},\"epoch\":{},\"offset\":{},\"subscribers\":{},\"backlog\":{{\"messages\":{},\"bytes\":{},\"first_offset\":{}}}}}",
                        json_str(&c.channel),
                        json_str(&c.epoch),
                        c.offset,
                        c.subscribers,
                        c.backlog.messages,
                        c.backlog.bytes,
                        c.backlog.first_offset
                    );
                }
                match (ok.more, list.last()) {
                    (Some(true), Some(last)) => after = Some(last.channel.clone()),
                    _ => break ExitCode::SUCCESS,
                }
            }
            Err(e) => break fail(e),
        }
    };
    client.close().await;
    status
}

pub(crate) async fn publish(
    url: &str,
    channel: &str,
    data: Option<&str>,
    text: bool,
    msg_id: Option<&str>,
    auth: &AuthArgs,
) -> ExitCode {
    let client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let one = |line: String| {
        let client = &client;
        async move {
            let json = if text {
                serde_json::Value::String(line).to_string()
            } else {
                line
            };
            match msg_id {
                Some(id) => client
                    .publish_with_id(channel, &json, id)
                    .await
                    .map(|ok| ok.offset.unwrap_or(0)),
                None => client.publish_json(channel, &json).await,
            }
        }
    };
    let mut status = ExitCode::SUCCESS;
    match data {
        Some(d) if d != "-" => match one(d.to_owned()).await {
            Ok(offset) => println!("{offset}"),
            Err(e) => status = fail(e),
        },
        _ => {
            for line in std::io::stdin().lock().lines() {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("error: reading stdin: {e}");
                        status = ExitCode::FAILURE;
                        break;
                    }
                };
                if line.trim().is_empty() && !text {
                    continue;
                }
                match one(line).await {
                    Ok(offset) => println!("{offset}"),
                    Err(e) => {
                        status = fail(e);
                        break;
                    }
                }
            }
        }
    }
    client.close().await;
    status
}

pub(crate) async fn create(url: &str, channel: &str, auth: &AuthArgs) -> ExitCode {
    let client = match connect(url, auth).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let status = match client.create(channel).await {
        Ok(true) => {
            println!("created {channel}");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("exists {channel}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    };
    client.close().await;
    status
}
