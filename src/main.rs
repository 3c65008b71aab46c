//! `tslm`: the gateway server and its command-line client. A thin shell over `tslm_server::run`
//! and `tslm_client`.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tslm_client::{Client, ClientError, ConnectOptions};
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
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Create a channel (succeeds when it already exists).
    Create {
        url: String,
        channel: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
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
}

#[derive(Args, Clone)]
struct AuthArgs {
    /// A listener token (sent as `Authorization: Bearer`); also read from TSLM_TOKEN.
    #[arg(long, env = "TSLM_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl AuthArgs {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone(),
        }
    }
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
    match tslm_server::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match Config::from_file(file) {
        Ok(c) => {
            println!("{}: ok", file.display());
            for l in &c.listeners {
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

fn fail(e: ClientError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

async fn sub(url: &str, channels: &[String], count: Option<u64>, auth: &AuthArgs) -> ExitCode {
    let mut client = match Client::connect_with(url, auth.options()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    for ch in channels {
        if let Err(e) = client.subscribe(ch).await {
            eprintln!("error: subscribe {ch}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut seen = 0u64;
    while count.is_none_or(|n| seen < n) {
        match client.next_delivery().await {
            Ok(d) => {
                let channel = serde_json::Value::String(d.channel).to_string();
                println!(
                    "{{\"channel\":{channel},\"offset\":{},\"data\":{}}}",
                    d.offset, d.data
                );
                seen += 1;
            }
            Err(e) => return fail(e),
        }
    }
    client.close().await;
    ExitCode::SUCCESS
}

async fn publish(
    url: &str,
    channel: &str,
    data: Option<&str>,
    text: bool,
    auth: &AuthArgs,
) -> ExitCode {
    let client = match Client::connect_with(url, auth.options()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let one = |line: String| {
        let client = &client;
        async move {
            if text {
                client.publish_text(channel, &line).await
            } else {
                client.publish_json(channel, &line).await
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
    let client = match Client::connect_with(url, auth.options()).await {
        Ok(c) => c,
        Err(e) => return fail(e),
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Sub {
            url,
            channels,
            count,
            auth,
        }) => {
            init_logging("warn");
            sub(&url, &channels, count, &auth).await
        }
        Some(Command::Pub {
            url,
            channel,
            data,
            text,
            auth,
        }) => {
            init_logging("warn");
            publish(&url, &channel, data.as_deref(), text, &auth).await
        }
        Some(Command::Create { url, channel, auth }) => {
            init_logging("warn");
            create(&url, &channel, &auth).await
        }
    }
}
