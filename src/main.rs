//! `tslm`: the gateway server and its command-line client. A thin shell over `tslm_server::run`
//! and `tslm_client`.

mod audit_cmd;
mod bench;
mod client_cmds;
mod health_cmd;
mod keys;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tslm_protocol::Start;

use audit_cmd::{AuditCommand, audit};
use bench::{BenchArgs, bench, run_bench};
use client_cmds::{AuthArgs, create, delete, history, list_channels, parse_start, publish, sub};
use keys::{hash_token, keygen};
use serve::{ServeArgs, check_config, serve};

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
    /// Work with the audit log (`[audit]`).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Probe a gateway: GET the URL (plain http://) and exit 0 on a 2xx answer, 1 on any other
    /// answer, no connection or no answer within the timeout, 2 for a bad URL. The container
    /// image's HEALTHCHECK (docs/operations.md, "Health and readiness").
    Health {
        /// `/readyz` (ready for new clients) or `/healthz` (alive) of a listener.
        #[arg(long, default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
        /// Give up after this many seconds (fractions allowed).
        #[arg(long, default_value_t = 3.0, value_parser = parse_timeout)]
        timeout_seconds: f64,
    },
    /// Create a channel (succeeds when it already exists).
    Create {
        url: String,
        channel: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
}

/// How log lines are written (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields
    /// and `spans` (the enclosing spans with their fields, outermost first).
    Json,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 3600"
        )),
    }
}

pub(crate) fn init_logging(default: &str) {
    init_logging_as(default, LogFormat::Text);
}

pub(crate) fn init_logging_as(default: &str, format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => tracing_subscriber::EnvFilter::new(default),
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring RUST_LOG={spec:?} ({e}); logging at {default}");
            tracing_subscriber::EnvFilter::new(default)
        }),
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
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

async fn async_main(command: Option<Command>, serve_args: ServeArgs) -> ExitCode {
    match command {
        Some(Command::Bench(args)) => bench(args).await,
        Some(Command::Keygen { out }) => keygen(&out),
        Some(Command::HashToken { stdin }) => hash_token(stdin),
        None => serve(serve_args).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::CheckConfig { file }) => check_config(&file),
        Some(Command::Audit(cmd)) => audit(&cmd),
        Some(Command::Health {
            url,
            timeout_seconds,
        }) => health_cmd::health(&url, std::time::Duration::from_secs_f64(timeout_seconds)).await,
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
