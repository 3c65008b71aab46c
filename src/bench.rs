//! `tslm bench`: the fan-out load generator's command line.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Clone)]
pub(crate) struct BenchArgs {
    /// What to measure: tslm, nats (nats-server's WebSocket listener) or nchan (nginx).
    #[arg(long, default_value = "tslm")]
    pub(crate) target: tslm_bench::Target,
    /// How subscribers connect: ws (WebSocket) or sse (Server-Sent Events: TSLM's /v1/events,
    /// nchan's EventSource location /ev/NAME; not nats).
    #[arg(long, default_value = "ws")]
    pub(crate) transport: tslm_bench::Transport,
    /// Where subscribers connect (TSLM: a listener that allows subscribing); a comma-separated
    /// list spreads them round robin (the nodes of a cluster).
    #[arg(long = "sub", default_value = "127.0.0.1:8080", value_delimiter = ',')]
    pub(crate) sub_addrs: Vec<std::net::SocketAddr>,
    /// Where the publisher connects (TSLM: a listener that allows creating and publishing).
    #[arg(long = "pub", default_value = "127.0.0.1:8081")]
    pub(crate) pub_addr: std::net::SocketAddr,
    /// Number of subscribers (0, TSLM only: publishing alone, paced by acknowledgements).
    #[arg(long, short = 's', default_value_t = 100)]
    pub(crate) subscribers: usize,
    /// Number of channels; subscriber i joins channel i mod C, messages go round-robin.
    #[arg(long, short = 'c', default_value_t = 1)]
    pub(crate) channels: usize,
    /// Publisher connections (several: channels must be a multiple of them).
    #[arg(long, short = 'P', default_value_t = 1)]
    pub(crate) publishers: usize,
    /// Messages to publish in all (0: connect, measure idle memory, exit).
    #[arg(long, short = 'm', default_value_t = 10_000)]
    pub(crate) messages: u64,
    /// Payload size in bytes.
    #[arg(long, short = 'p', default_value_t = 100)]
    pub(crate) size: usize,
    /// Messages per second; without it, flat out.
    #[arg(long, short = 'r')]
    pub(crate) rate: Option<u64>,
    /// Most messages the publisher may run ahead of the slowest subscriber (with no subscribers:
    /// most unanswered publishes per publisher).
    #[arg(long, default_value_t = 1000)]
    pub(crate) window: u64,
    /// Spread subscribers over this many source addresses 127.0.0.1.. (default: one per 500
    /// subscribers, so a server's per-address limits are not what is measured).
    #[arg(long)]
    pub(crate) sources: Option<u8>,
    /// PID of the server, when local: its memory and CPU are reported (a comma-separated list:
    /// the nodes of a cluster, memory summed, CPU summed and each).
    #[arg(long, value_delimiter = ',')]
    pub(crate) server_pid: Vec<u32>,
    /// PIDs of other local processes whose CPU is reported apart (the Redis of a cluster).
    #[arg(long, value_delimiter = ',')]
    pub(crate) aux_pid: Vec<u32>,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub(crate) threads: usize,
    /// Print the report as one JSON line (otherwise a table).
    #[arg(long)]
    pub(crate) json: bool,
    /// No progress line.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Churn instead of fan-out, for this many seconds (TSLM only; `-r` is the publish rate,
    /// default 200/s): subscribers reconnect and resume every 1 to 5 s, publishes carry a
    /// `msg_id` and one in 10 is retried; the server's RSS is sampled every 10 s and its slope
    /// after the warm-up reported (needs `--server-pid`).
    #[arg(long)]
    pub(crate) churn_seconds: Option<u64>,
    /// Churn: seconds left out of the RSS slope while backlogs and de-duplication tables fill.
    #[arg(long, default_value_t = 60)]
    pub(crate) churn_warmup_seconds: u64,
    /// Churn: payload sizes are spread evenly from 16 bytes up to this.
    #[arg(long, default_value_t = 2000)]
    pub(crate) churn_max_size: usize,
}

pub(crate) async fn bench(args: BenchArgs) -> ExitCode {
    if let Some(seconds) = args.churn_seconds {
        return churn(args, seconds).await;
    }
    let sources = args.sources.unwrap_or_else(|| {
        u8::try_from(args.subscribers.div_ceil(500).clamp(1, 250)).unwrap_or(250)
    });
    let cfg = tslm_bench::BenchConfig {
        target: args.target,
        transport: args.transport,
        sub_addrs: args.sub_addrs,
        pub_addr: args.pub_addr,
        subscribers: args.subscribers,
        channels: args.channels,
        publishers: args.publishers,
        messages: args.messages,
        size: args.size,
        rate: args.rate,
        window: args.window.max(2 * args.channels as u64),
        sources,
        server_pids: args.server_pid,
        aux_pids: args.aux_pid,
        progress: !args.quiet,
        drain_timeout: std::time::Duration::from_secs(10),
    };
    match tslm_bench::run(cfg).await {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                println!("target            {} ({})", r.target, r.transport);
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
                if let (Some(n), Some(p)) = (r.publishes_acked, r.publishes_per_second) {
                    println!(
                        "publishes         {n} acknowledged ({p:.0}/s) by {} publisher(s)",
                        r.publishers
                    );
                }
                if let Some(c) = r.server_cpu_seconds {
                    println!("server CPU        {c:.2} s while publishing and delivering");
                }
                if r.server_cpu_seconds_each.len() > 1 {
                    let each: Vec<String> = r
                        .server_cpu_seconds_each
                        .iter()
                        .map(|c| format!("{c:.2}"))
                        .collect();
                    println!("  per process     {} s", each.join(", "));
                }
                if let Some(c) = r.aux_cpu_seconds {
                    println!("other CPU         {c:.2} s (--aux-pid)");
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

async fn churn(args: BenchArgs, seconds: u64) -> ExitCode {
    use std::time::Duration;
    let cfg = tslm_bench::ChurnConfig {
        // Churn drives one node: the first subscriber address.
        sub_addr: args.sub_addrs[0],
        pub_addr: args.pub_addr,
        subscribers: args.subscribers,
        channels: args.channels,
        rate: args.rate.unwrap_or(200),
        min_size: 16,
        max_size: args.churn_max_size.max(16),
        min_connected: Duration::from_secs(1),
        max_connected: Duration::from_secs(5),
        retry_every: 10,
        publisher_connected: Duration::from_secs(30),
        duration: Duration::from_secs(seconds),
        warmup: Duration::from_secs(args.churn_warmup_seconds),
        sample_every: Duration::from_secs(10),
        sources: args.sources.unwrap_or_else(|| {
            u8::try_from(args.subscribers.div_ceil(500).clamp(1, 250)).unwrap_or(250)
        }),
        server_pid: args.server_pid.first().copied(),
        progress: !args.quiet,
    };
    match tslm_bench::run_churn(cfg).await {
        Ok(r) => {
            if args.json {
                println!("{}", r.to_json());
            } else {
                for (t, rss) in &r.samples {
                    println!("{t:>8.1} s  {rss:>9} KiB");
                }
                println!(
                    "slope after warm-up  {} MB/min",
                    r.slope_mb_per_minute
                        .map_or("-".into(), |s| format!("{s:.3}"))
                );
                println!(
                    "published {} (retried {}, acknowledged as duplicates {}), deliveries {}, reconnects {} (resumed without loss {}, with loss {}), errors {}",
                    r.published,
                    r.retries,
                    r.duplicates_acknowledged,
                    r.deliveries,
                    r.reconnects,
                    r.resumed_without_loss,
                    r.resumed_with_loss,
                    r.errors
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

/// The load generator runs on a runtime of its own size (`--threads`), so that it takes no
/// more of the machine than asked from the server it measures.
pub(crate) fn run_bench(args: BenchArgs) -> ExitCode {
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
