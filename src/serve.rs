//! `tslm serve` and `tslm check-config`: loading the configuration, the ready file, signals.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use tokio::sync::Notify;
use tslm_server::Config;

use crate::{LogFormat, init_logging_as};

#[derive(Args, Clone, Default)]
pub(crate) struct ServeArgs {
    /// A TOML config file.
    #[arg(long, value_name = "FILE", conflicts_with = "config_dir")]
    pub(crate) config: Option<PathBuf>,
    /// A directory holding tslm.toml (the original TSLM's layout). Without --config or
    /// --config-dir, ./config/tslm.toml is used when it exists, else the embedded default.
    #[arg(long, short = 'c', value_name = "DIR")]
    pub(crate) config_dir: Option<PathBuf>,
    /// Once every listener is bound, write their addresses to FILE as JSON
    /// (`{"pid":N,"listeners":{"NAME":["IP:PORT",...]}}`), atomically (a temporary file renamed
    /// into place), so scripts and tests wait for the file instead of reading log lines. Ports
    /// given as 0 in the config appear as the ports the system chose.
    #[arg(long, value_name = "FILE")]
    pub(crate) ready_file: Option<PathBuf>,
    /// How log lines are written to stderr: `text` (default) or `json` (one object per line,
    /// fields `timestamp`, `level`, `target`, `message`, the event's own fields and `spans`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

pub(crate) fn load_config(args: &ServeArgs) -> Result<(Config, String), tslm_server::ConfigError> {
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

/// SIGINT and SIGTERM: the first resolves `first` (shut down), the second `second` (skip the rest
/// of the drain delay). Later ones are ignored.
pub(crate) struct Signals {
    first: Arc<Notify>,
    second: Arc<Notify>,
}

impl Signals {
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let (first, second) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return Self { first, second };
        };
        let (f, s) = (Arc::clone(&first), Arc::clone(&second));
        tokio::spawn(async move {
            for (i, notify) in [f, s].into_iter().enumerate() {
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                if i == 0 {
                    tracing::info!(signal = name, "shutdown requested");
                } else {
                    tracing::info!(signal = name, "shutdown requested again");
                }
                // Stored when nobody waits yet, so a signal is never lost.
                notify.notify_one();
            }
            // Later signals are received and ignored (SIGKILL stops the process at once).
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
        });
        Self { first, second }
    }
}

pub(crate) async fn serve(args: ServeArgs) -> ExitCode {
    init_logging_as("info", args.log_format);
    // Startup failures: on stderr as before, or as a JSON log line, so that every line of a JSON
    // log parses.
    let fail = |message: String| {
        match args.log_format {
            LogFormat::Text => eprintln!("error: {message}"),
            LogFormat::Json => tracing::error!(error = %message, "cannot start"),
        }
        ExitCode::FAILURE
    };
    let (config, origin) = match load_config(&args) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    tracing::info!(config = %origin, version = env!("CARGO_PKG_VERSION"), "starting tslm");
    let server = match tslm_server::Server::bind(config).await {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    if let Some(path) = &args.ready_file
        && let Err(e) = write_ready_file(path, &server.local_addrs())
    {
        return fail(format!("--ready-file {}: {e}", path.display()));
    }
    tokio::spawn(reload_on_sighup(server.reloader(), args.clone()));
    let signals = Signals::install();
    server
        .run_staged(signals.first.notified(), signals.second.notified())
        .await;
    ExitCode::SUCCESS
}

/// On every SIGHUP: loads the configuration again from where it came from and hands it to the
/// running server. A configuration that does not validate is refused with the same messages as
/// at startup, and the running one stays; after a reload the ready file names the listeners'
/// addresses again.
async fn reload_on_sighup(reloader: tslm_server::Reloader, args: ServeArgs) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    while hup.recv().await.is_some() {
        let config = match load_config(&args) {
            Ok((config, origin)) => {
                tracing::info!(config = %origin, "reloading the configuration (SIGHUP)");
                config
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the configuration does not validate; the running one stays");
                continue;
            }
        };
        match reloader.reload(config).await {
            Ok(report) => {
                if let Some(path) = &args.ready_file
                    && let Err(e) = write_ready_file(path, &report.addrs)
                {
                    tracing::error!(error = %e, file = %path.display(), "cannot rewrite the ready file");
                }
            }
            // Logged by the server, with what it kept.
            Err(tslm_server::ReloadError::ShuttingDown) => return,
            Err(_) => {}
        }
    }
}

/// The ready signal of `serve --ready-file`: every bound address by listener, written to a
/// temporary file beside `path` and renamed over it, so a reader never sees half a file.
pub(crate) fn write_ready_file(
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

pub(crate) fn check_config(file: &std::path::Path) -> ExitCode {
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
