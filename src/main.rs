//! `tslm`: the gateway server and its command-line client. A thin shell over `tslm_server::run`
//! and `tslm_client`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tslm_client::{Client, ClientError, ConnectOptions};
use tslm_protocol::v1::{ReplyOk, ServerMessage};
use tslm_protocol::{Epoch, Offset, Start};
use tslm_server::Config;

#[derive(Parser)]
#[command(
    name = "tslm",
    version,
    about = "TSLM (Terminal Stream Last Mile): a real-time WebSocket gateway for network boundaries"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default when no command is given).
    Serve(ServeArgs),
    /// Validate a config file without starting.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Subscribe to channels and print each message as a JSON line.
    Sub {
        /// WebSocket URL of a listener that allows subscribing, e.g. ws://127.0.0.1:8080
        url: String,
        /// Channels to subscribe to.
        #[arg(required = true)]
        channels: Vec<String>,
        /// Exit after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Where to start: `new` (default), `oldest`, `last:N`, or `EPOCH:OFFSET` to resume
        /// after the message OFFSET of EPOCH (as printed on stderr when subscribing).
        #[arg(long, value_parser = parse_start, default_value = "new")]
        start: Start,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Publish messages: DATA, or one message per line of stdin when DATA is absent or `-`.
    /// Prints each message's offset.
    Pub {
        /// WebSocket URL of a listener that allows publishing, e.g. ws://127.0.0.1:8081
        url: String,
        channel: String,
        /// A JSON value (or any text with --text).
        data: Option<String>,
        /// Publish the data as a JSON string instead of parsing it as JSON.
        #[arg(long)]
        text: bool,
        /// A message id: publishing it again within the channel's de-duplication window is
        /// acknowledged with the first offset and not delivered twice (DATA only, not stdin).
        #[arg(long, value_name = "ID", requires = "data")]
        msg_id: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Read a channel's backlog without subscribing; prints one JSON line per message.
    History {
        /// WebSocket URL of a listener that allows subscribing.
        url: String,
        channel: String,
        /// `oldest` (default), `new`, `last:N`, or `EPOCH:OFFSET`.
        #[arg(long, value_parser = parse_start, default_value = "oldest")]
        start: Start,
        /// At most this many messages (1..=1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Delete a channel: its subscribers are told, its backlog is dropped.
    Delete {
        url: String,
        channel: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// List channels (listeners that may create only); one JSON line per channel.
    Channels {
        url: String,
        /// Only channels whose name starts with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Run a fan-out benchmark against TSLM, nats-server or nginx+nchan (docs/performance.md).
    Bench(BenchArgs),
    /// Make an Ed25519 key pair for a publisher: the secret to FILE, the public key line to
    /// stdout (for `[publisher.NAME] keys`).
    Keygen {
        /// Where to write the secret key (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a random publisher token and print it with the line for the config
    /// (`[publisher.NAME] token_hashes`), which holds only its SHA-256.
    HashToken {
        /// Hash the token read from stdin instead of making one.
        #[arg(long)]
        stdin: bool,
    },
    /// Create a channel (succeeds when it already exists).
    Create {
        url: String,
        channel: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

#[derive(Args, Clone)]
struct BenchArgs {
    /// What to measure: tslm, nats (nats-server's WebSocket listener) or nchan (nginx).
    #[arg(long, default_value = "tslm")]
    target: tslm_bench::Target,
    /// Where subscribers connect (TSLM: a listener that allows subscribing).
    #[arg(long = "sub", default_value = "127.0.0.1:8080")]
    sub_addr: std::net::SocketAddr,
    /// Where the publisher connects (TSLM: a listener that allows creating and publishing).
    #[arg(long = "pub", default_value = "127.0.0.1:8081")]
    pub_addr: std::net::SocketAddr,
    /// Number of subscribers.
    #[arg(long, short = 's', default_value_t = 100)]
    subscribers: usize,
    /// Number of channels; subscriber i joins channel i mod C, messages go round-robin.
    #[arg(long, short = 'c', default_value_t = 1)]
    channels: usize,
    /// Messages to publish in all (0: connect, measure idle memory, exit).
    #[arg(long, short = 'm', default_value_t = 10_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, short = 'p', default_value_t = 100)]
    size: usize,
    /// Messages per second; without it, flat out.
    #[arg(long, short = 'r')]
    rate: Option<u64>,
    /// Most messages the publisher may run ahead of the slowest subscriber.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Spread subscribers over this many source addresses 127.0.0.1.. (default: one per 500
    /// subscribers, so a server's per-address limits are not what is measured).
    #[arg(long)]
    sources: Option<u8>,
    /// PID of the server, when local: its memory and CPU are reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as one JSON line (otherwise a table).
    #[arg(long)]
    json: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// A TOML config file.
    #[arg(long, value_name = "FILE", conflicts_with = "config_dir")]
    config: Option<PathBuf>,
    /// A directory holding tslm.toml (the original TSLM's layout). Without --config or
    /// --config-dir, ./config/tslm.toml is used when it exists, else the embedded default.
    #[arg(long, short = 'c', value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Once every listener is bound, write their addresses to FILE as JSON
    /// (`{"pid":N,"listeners":{"NAME":["IP:PORT",...]}}`), atomically (a temporary file renamed
    /// into place), so scripts and tests wait for the file instead of reading log lines. Ports
    /// given as 0 in the config appear as the ports the system chose.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct AuthArgs {
    /// A token sent as `Authorization: Bearer`: a listener's shared token, a publisher's token
    /// or a subscriber's access token; also read from TSLM_TOKEN.
    #[arg(long, env = "TSLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Authenticate as this publisher (with --key).
    #[arg(long, env = "TSLM_PUBLISHER", requires = "key")]
    publisher: Option<String>,
    /// The publisher's secret key file, as written by `tslm keygen`.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_KEY_FILE",
        requires = "publisher"
    )]
    key: Option<PathBuf>,
    /// wss://: trust the CA certificates of this PEM file instead of the system's.
    #[arg(long, value_name = "FILE", env = "TSLM_CA_FILE")]
    ca: Option<PathBuf>,
    /// wss://: present this client certificate chain (PEM) to a mutual-TLS listener.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_CERT_FILE",
        requires = "cert_key"
    )]
    cert: Option<PathBuf>,
    /// wss://: the private key (PEM) of --cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "TSLM_CERT_KEY_FILE",
        requires = "cert"
    )]
    cert_key: Option<PathBuf>,
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

/// `tslm keygen --out FILE`: a new Ed25519 key pair for a publisher. The secret goes to FILE
/// (created, never overwritten, readable by its owner only); the public key is printed as the
/// line for the gateway's config.
fn keygen(out: &std::path::Path) -> ExitCode {
    let key = tslm_auth::keys::SecretKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(out).and_then(|mut f| {
        use std::io::Write;
        writeln!(f, "{}", key.to_text())
    });
    if let Err(e) = written {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "secret key written to {} (keep it on the publisher only)",
        out.display()
    );
    eprintln!("add the public key to the publisher's entry in the gateway config:");
    println!("keys = [\"{}\"]", key.public_text());
    ExitCode::SUCCESS
}

/// `tslm hash-token`: a new random token (or the token read from stdin with --stdin) and the
/// line for the gateway's config, which holds only its hash.
fn hash_token(stdin: bool) -> ExitCode {
    let token = if stdin {
        let mut line = String::new();
        if let Err(e) = std::io::stdin().read_line(&mut line) {
            eprintln!("error: reading stdin: {e}");
            return ExitCode::FAILURE;
        }
        let t = line.trim().to_owned();
        if t.is_empty() {
            eprintln!("error: no token on stdin");
            return ExitCode::FAILURE;
        }
        t
    } else {
        let t = tslm_auth::token::generate_token();
        eprintln!("token (give it to the publisher; it is shown once and stored nowhere):");
        println!("{t}");
        t
    };
    eprintln!("add the hash to the publisher's entry in the gateway config:");
    println!(
        "token_hashes = [\"{}\"]",
        tslm_auth::token::hash_line(&token)
    );
    ExitCode::SUCCESS
}

fn init_logging(default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new(default),
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={spec:?} ({e}); logging at {default}");
            tracing_subscriber::EnvFilter::new(default)
        }),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_config(args: &ServeArgs) -> Result<(Config, String), tslm_server::ConfigError> {
    if let Some(file) = &args.config {
        return Ok((Config::from_file(file)?, file.display().to_string()));
    }
    if let Some(dir) = &args.config_dir {
        let file = dir.join("tslm.toml");
        return Ok((Config::from_file(&file)?, file.display().to_string()));
    }
    let legacy = PathBuf::from("config/tslm.toml");
    if legacy.is_file() {
        return Ok((Config::from_file(&legacy)?, legacy.display().to_string()));
    }
    // The original also read config/tslm.{yaml,json,...}; say so rather than ignore it.
    for ext in ["yaml", "yml", "json", "ini", "ron", "json5"] {
        let other = PathBuf::from(format!("config/tslm.{ext}"));
        if other.is_file() {
            return Err(tslm_server::ConfigError::Invalid {
                origin: other.display().to_string(),
                message: "only TOML configuration is supported: convert it to config/tslm.toml"
                    .into(),
            });
        }
    }
    Ok((Config::embedded_default(), "embedded default".into()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    tracing::info!(signal = name, "shutdown requested");
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_logging("info");
    let (config, origin) = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(config = %origin, version = env!("CARGO_PKG_VERSION"), "starting tslm");
    let server = match tslm_server::Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.ready_file
        && let Err(e) = write_ready_file(path, &server.local_addrs())
    {
        eprintln!("error: --ready-file {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    server.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// The ready signal of `serve --ready-file`: every bound address by listener, written to a
/// temporary file beside `path` and renamed over it, so a reader never sees half a file.
fn write_ready_file(
    path: &std::path::Path,
    addrs: &[tslm_server::BoundAddr],
) -> std::io::Result<()> {
    let mut listeners = serde_json::Map::new();
    for a in addrs {
        let entry = listeners
            .entry(a.listener.clone())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(v) = entry {
            v.push(serde_json::Value::String(a.addr.to_string()));
        }
    }
    let doc = serde_json::json!({ "pid": std::process::id(), "listeners": listeners });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, path)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::from_file(file) {
        Ok(c) => {
            println!("{}: ok", file.display());
            for l in &c.listeners {
                if l.echo {
                    println!(
                        "  warning: listener {} has echo = true (conformance testing only: it runs no commands)",
                        l.name
                    );
                }
                let addrs: Vec<String> = l.bind.iter().map(ToString::to_string).collect();
                println!(
                    "  listener {}: {} permissions={}",
                    l.name,
                    addrs.join(","),
                    l.permissions
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `new`, `oldest`, `last:N` or `EPOCH:OFFSET`.
fn parse_start(s: &str) -> Result<Start, String> {
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
async fn connect(url: &str, auth: &AuthArgs) -> Result<Client, ExitCode> {
    let opts = auth.options()?;
    Client::connect_with(url, opts).await.map_err(fail)
}

fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// One line on stderr describing where a subscription starts (so a later run can resume).
fn describe_subscription(channel: &str, ok: &ReplyOk) -> String {
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

async fn sub(
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

async fn history(
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

async fn delete(url: &str, channel: &str, auth: &AuthArgs) -> ExitCode {
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

async fn list_channels(url: &str, prefix: Option<&str>, auth: &AuthArgs) -> ExitCode {
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

async fn publish(
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

async fn create(url: &str, channel: &str, auth: &AuthArgs) -> ExitCode {
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

async fn bench(args: BenchArgs) -> ExitCode {
    let sources = args.sources.unwrap_or_else(|| {
        u8::try_from(args.subscribers.div_ceil(500).clamp(1, 250)).unwrap_or(250)
    });
    let cfg = tslm_bench::BenchConfig {
        target: args.target,
        sub_addr: args.sub_addr,
        pub_addr: args.pub_addr,
        subscribers: args.subscribers,
        channels: args.channels,
        messages: args.messages,
        size: args.size,
        rate: args.rate,
        window: args.window.max(2 * args.channels as u64),
        sources,
        server_pid: args.server_pid,
        progress: !args.quiet,
        drain_timeout: std::time::Duration::from_secs(10),
    };
    match tslm_bench::run(cfg).await {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                println!("target            {}", r.target);
                println!(
                    "subscribers       {} on {} channel(s)",
                    r.subscribers, r.channels
                );
                println!(
                    "messages          {} x {} bytes, {}",
                    r.messages,
                    r.size,
                    r.rate.map_or("flat out".into(), |r| format!("{r}/s"))
                );
                println!(
                    "deliveries        {} of {} ({:.0}/s)",
                    r.deliveries, r.expected_deliveries, r.deliveries_per_second
                );
                println!("lost              {}", r.lost);
                println!("dup/out of order  {}", r.duplicated_or_reordered);
                println!(
                    "latency ms        p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
                    r.latency_p50_ms, r.latency_p99_ms, r.latency_p999_ms, r.latency_max_ms
                );
                if let Some(b) = r.server_idle_bytes_per_connection {
                    println!("server idle       {b:.0} bytes per connection");
                }
                if let Some(p) = r.server_rss_peak_kib {
                    println!("server peak RSS   {p} KiB");
                }
                if let Some(c) = r.server_cpu_seconds {
                    println!("server CPU        {c:.2} s while publishing and delivering");
                }
                println!(
                    "bench CPU         {:.2} s over the run (publishing took {:.2} s of wall time)",
                    r.bench_cpu_seconds, r.publish_seconds
                );
            }
            if r.lost > 0
                || r.duplicated_or_reordered > 0
                || r.publish_errors > 0
                || r.subscriber_failures > 0
            {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(Command::Bench(args)) => return run_bench(args),
        other => other,
    };
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(async_main(command, cli.serve)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The load generator runs on a runtime of its own size (`--threads`), so that it takes no
/// more of the machine than asked from the server it measures.
fn run_bench(args: BenchArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build();
    match rt {
        Ok(rt) => rt.block_on(bench(args)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn async_main(command: Option<Command>, serve_args: ServeArgs) -> ExitCode {
    match command {
        Some(Command::Bench(args)) => bench(args).await,
        Some(Command::Keygen { out }) => keygen(&out),
        Some(Command::HashToken { stdin }) => hash_token(stdin),
        None => serve(serve_args).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Sub {
            url,
            channels,
            count,
            start,
            auth,
        }) => {
            init_logging("warn");
            sub(&url, &channels, count, start, &auth).await
        }
        Some(Command::Pub {
            url,
            channel,
            data,
            text,
            msg_id,
            auth,
        }) => {
            init_logging("warn");
            publish(
                &url,
                &channel,
                data.as_deref(),
                text,
                msg_id.as_deref(),
                &auth,
            )
            .await
        }
        Some(Command::History {
            url,
            channel,
            start,
            limit,
            auth,
        }) => {
            init_logging("warn");
            history(&url, &channel, start, limit, &auth).await
        }
        Some(Command::Delete { url, channel, auth }) => {
            init_logging("warn");
            delete(&url, &channel, &auth).await
        }
        Some(Command::Channels { url, prefix, auth }) => {
            init_logging("warn");
            list_channels(&url, prefix.as_deref(), &auth).await
        }
        Some(Command::Create { url, channel, auth }) => {
            init_logging("warn");
            create(&url, &channel, &auth).await
        }
    }
}
