//! `tslm bench`: a fan-out load generator for TSLM and, for side-by-side comparison, for
//! nats-server (WebSocket listener) and nginx with the nchan module. See docs/performance.md.
//!
//! Subscribers are one lean task each (a raw WebSocket reader); the publisher embeds a sequence
//! number and a send timestamp in every payload; subscribers check order and record latency.
//! Publishing is paced end to end: the publisher never runs more than `window` messages ahead
//! of the slowest subscriber, so "flat out" means as fast as the whole system delivers, for
//! every target alike, and the result can be lossless.

mod churn;
mod hist;
mod procstat;
pub mod sse;
mod target;
pub mod ws;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use churn::{ChurnConfig, ChurnReport, run_churn};
pub use target::{Target, Transport};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: Target,
    /// How subscribers connect: WebSocket, or Server-Sent Events (TSLM's `/v1/events`, nchan's
    /// EventSource location).
    pub transport: Transport,
    /// Where subscribers connect: `host:port` (the public listener; nats' websocket port; nginx).
    /// Several: subscriber i connects to the (i mod n)th (one cluster, several nodes).
    pub sub_addrs: Vec<SocketAddr>,
    /// Where the publisher connects (the private listener; nats' websocket port; nginx).
    pub pub_addr: SocketAddr,
    /// Subscribers; 0 (TSLM only) measures publishing alone, paced by acknowledgements.
    pub subscribers: usize,
    pub channels: usize,
    /// Publisher connections; publisher k sends messages k, k+P, … (so, with channels a multiple
    /// of P, each channel has one publisher and its order is kept).
    pub publishers: usize,
    /// Messages published in all (spread round-robin over the channels). 0: idle test only.
    pub messages: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Messages per second; `None`: flat out.
    pub rate: Option<u64>,
    /// Most messages the publisher may be ahead of the slowest subscriber (with no subscribers:
    /// most messages each publisher may have unacknowledged).
    pub window: u64,
    /// Spread subscribers over this many source addresses 127.0.0.1.. (loopback only).
    pub sources: u8,
    /// The server's PIDs (several: the nodes of a cluster), when it runs on this machine: their
    /// RSS (summed) and CPU (summed and each) are reported.
    pub server_pids: Vec<u32>,
    /// Other processes whose CPU counts apart (a Redis behind the cluster).
    pub aux_pids: Vec<u32>,
    /// Print a progress line every second.
    pub progress: bool,
    /// Give up when no delivery arrives for this long after publishing ends.
    pub drain_timeout: Duration,
}

/// What was measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub target: String,
    pub transport: String,
    pub subscribers: usize,
    pub channels: usize,
    pub publishers: usize,
    pub messages: u64,
    pub size: usize,
    pub rate: Option<u64>,
    pub connect_seconds: f64,
    pub publish_seconds: f64,
    pub expected_deliveries: u64,
    pub deliveries: u64,
    pub deliveries_per_second: f64,
    pub lost: u64,
    pub duplicated_or_reordered: u64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    pub publish_errors: u64,
    pub subscriber_failures: u64,
    pub server_rss_idle_kib: Option<u64>,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_peak_kib: Option<u64>,
    pub server_idle_bytes_per_connection: Option<f64>,
    pub server_cpu_seconds: Option<f64>,
    /// Per server PID, in the order given.
    pub server_cpu_seconds_each: Vec<f64>,
    /// The auxiliary processes' CPU, summed.
    pub aux_cpu_seconds: Option<f64>,
    /// Publishes the server acknowledged (TSLM replies with `"ok":true`; `None` elsewhere).
    pub publishes_acked: Option<u64>,
    /// Acknowledged publishes per second, from the first publish to the last acknowledgement.
    pub publishes_per_second: Option<f64>,
    pub bench_cpu_seconds: f64,
}

impl Report {
    /// One JSON object, for scripts.
    pub fn to_json(&self) -> String {
        fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or("null".into(), |x| x.to_string())
        }
        format!(
            concat!(
                "{{\"target\":\"{}\",\"transport\":\"{}\",\"subscribers\":{},\"channels\":{},\"publishers\":{},\"messages\":{},\"size\":{},\"rate\":{},",
                "\"connect_seconds\":{:.3},\"publish_seconds\":{:.3},\"expected_deliveries\":{},\"deliveries\":{},",
                "\"deliveries_per_second\":{:.0},\"lost\":{},\"duplicated_or_reordered\":{},",
                "\"latency_ms\":{{\"p50\":{:.3},\"p99\":{:.3},\"p999\":{:.3},\"max\":{:.3}}},",
                "\"publish_errors\":{},\"subscriber_failures\":{},\"server_rss_before_kib\":{},\"server_rss_idle_kib\":{},",
                "\"server_rss_peak_kib\":{},\"server_idle_bytes_per_connection\":{},\"server_cpu_seconds\":{},\"server_cpu_seconds_each\":[{}],\"aux_cpu_seconds\":{},",
                "\"publishes_acked\":{},\"publishes_per_second\":{},\"bench_cpu_seconds\":{:.2}}}"
            ),
            self.target,
            self.transport,
            self.subscribers,
            self.channels,
            self.publishers,
            self.messages,
            self.size,
            opt(&self.rate),
            self.connect_seconds,
            self.publish_seconds,
            self.expected_deliveries,
            self.deliveries,
            self.deliveries_per_second,
            self.lost,
            self.duplicated_or_reordered,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_p999_ms,
            self.latency_max_ms,
            self.publish_errors,
            self.subscriber_failures,
            opt(&self.server_rss_before_kib),
            opt(&self.server_rss_idle_kib),
            opt(&self.server_rss_peak_kib),
            opt(&self
                .server_idle_bytes_per_connection
                .map(|b| format!("{b:.0}"))),
            opt(&self.server_cpu_seconds.map(|c| format!("{c:.2}"))),
            self.server_cpu_seconds_each
                .iter()
                .map(|c| format!("{c:.2}"))
                .collect::<Vec<_>>()
                .join(","),
            opt(&self.aux_cpu_seconds.map(|c| format!("{c:.2}"))),
            opt(&self.publishes_acked),
            opt(&self.publishes_per_second.map(|p| format!("{p:.0}"))),
            self.bench_cpu_seconds,
        )
    }
}

/// Benchmark failures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("subscriber {index} could not connect: {source}")]
    Subscriber {
        index: usize,
        source: std::io::Error,
    },
    #[error("publisher: {0}")]
    Publisher(std::io::Error),
    #[error("invalid parameters: {0}")]
    Invalid(String),
}

/// State shared by the publisher, the subscribers and the reporter.
pub(crate) struct Shared {
    pub start: Instant,
    pub channels: usize,
    pub latency: hist::Histogram,
    /// Per subscriber: the last global sequence number it received (+1; 0 = none yet).
    pub progress: Vec<AtomicU64>,
    pub deliveries: AtomicU64,
    pub lost: AtomicU64,
    pub backwards: AtomicU64,
    pub publish_errors: AtomicU64,
    pub subscriber_failures: AtomicU64,
    pub stop: AtomicBool,
}

impl Shared {
    pub(crate) fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Per-subscriber ordering check and latency recording.
pub(crate) struct SubState {
    pub index: usize,
    pub channel: usize,
    /// Next per-channel sequence number expected.
    pub expected: u64,
}

impl SubState {
    /// Records one payload (any bytes holding `"s":<seq>` and `"t":<ns>`).
    pub(crate) fn on_payload(&mut self, shared: &Shared, payload: &[u8]) {
        let (Some(seq), Some(t)) = (find_num(payload, b"\"s\":"), find_num(payload, b"\"t\":"))
        else {
            return;
        };
        let now = shared.now_ns();
        shared.latency.record(now.saturating_sub(t));
        shared.deliveries.fetch_add(1, Ordering::Relaxed);
        let per_channel = seq / shared.channels as u64;
        if per_channel == self.expected {
            self.expected += 1;
        } else if per_channel > self.expected {
            shared
                .lost
                .fetch_add(per_channel - self.expected, Ordering::Relaxed);
            self.expected = per_channel + 1;
        } else {
            shared.backwards.fetch_add(1, Ordering::Relaxed);
        }
        shared.progress[self.index].store(seq + 1, Ordering::Relaxed);
    }
}

/// The unsigned number after `key` in `b`.
fn find_num(b: &[u8], key: &[u8]) -> Option<u64> {
    let at = b.windows(key.len()).position(|w| w == key)? + key.len();
    let mut n: u64 = 0;
    let mut any = false;
    for &c in &b[at..] {
        if c.is_ascii_digit() {
            n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

/// The payload of global message `seq`: `{"s":seq,"t":ns,"p":"xx…"}`, padded to `size` bytes.
pub(crate) fn payload(seq: u64, t: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{{\"s\":{seq},\"t\":{t},\"p\":\"").into_bytes();
    let pad = size.saturating_sub(p.len() + 2);
    p.resize(p.len() + pad, b'x');
    p.extend_from_slice(b"\"}");
    p
}

pub(crate) fn channel_name(c: usize) -> String {
    format!("bench.{c}")
}

fn source_for(i: usize, sources: u8, target: SocketAddr) -> Option<IpAddr> {
    if sources <= 1 || !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (i % sources as usize) as u8,
    )))
}

/// Raises this process's open-file limit to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// Runs one benchmark.
pub async fn run(cfg: BenchConfig) -> Result<Report, BenchError> {
    if cfg.channels == 0 || cfg.publishers == 0 || cfg.sub_addrs.is_empty() {
        return Err(BenchError::Invalid(
            "channels, publishers and subscriber addresses must be at least 1".into(),
        ));
    }
    if cfg.subscribers == 0 && (cfg.target != Target::Tslm || cfg.messages == 0) {
        return Err(BenchError::Invalid(
            "no subscribers: only for publishing to TSLM (paced by its acknowledgements)".into(),
        ));
    }
    if cfg.publishers > 1 && !cfg.channels.is_multiple_of(cfg.publishers) {
        return Err(BenchError::Invalid(
            "with several publishers, channels must be a multiple of publishers (one publisher per channel keeps its order)".into(),
        ));
    }
    let limit = raise_fd_limit();
    if (cfg.subscribers as u64 + 64) > limit {
        return Err(BenchError::Invalid(format!(
            "{} subscribers need more file descriptors than this process may open ({limit})",
            cfg.subscribers
        )));
    }
    let shared = Arc::new(Shared {
        start: Instant::now(),
        channels: cfg.channels,
        latency: hist::Histogram::new(),
        progress: (0..cfg.subscribers).map(|_| AtomicU64::new(0)).collect(),
        deliveries: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        backwards: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        subscriber_failures: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let bench_cpu_start = procstat::cpu_seconds(None);
    let server_rss = |pids: &[u32]| -> Option<u64> {
        pids.iter()
            .map(|&p| procstat::rss_kib(p))
            .sum::<Option<u64>>()
            .filter(|_| !pids.is_empty())
    };
    let cpu_of = |pids: &[u32]| -> Option<Vec<f64>> {
        pids.iter()
            .map(|&p| procstat::cpu_seconds(Some(p)))
            .collect::<Option<Vec<f64>>>()
            .filter(|_| !pids.is_empty())
    };
    let rss_before = server_rss(&cfg.server_pids);

    // Publishers first, so that channels exist (TSLM needs an explicit create).
    let mut publishers = Vec::with_capacity(cfg.publishers);
    for _ in 0..cfg.publishers {
        publishers.push(
            target::Publisher::connect(&cfg)
                .await
                .map_err(BenchError::Publisher)?,
        );
    }

    // Subscribers, a bounded number connecting at a time.
    let connect_start = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut ready = Vec::with_capacity(cfg.subscribers);
    for i in 0..cfg.subscribers {
        let permit = Arc::clone(&gate)
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Invalid("closed".into()))?;
        let cfg2 = cfg.clone();
        let shared2 = Arc::clone(&shared);
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let addr = cfg2.sub_addrs[i % cfg2.sub_addrs.len()];
            let source = source_for(i, cfg2.sources, addr);
            let st = SubState {
                index: i,
                channel: i % cfg2.channels,
                expected: 0,
            };
            match target::Subscriber::connect(&cfg2, addr, source, st.channel).await {
                Ok(sub) => {
                    drop(permit);
                    let _ = tx.send(Ok(()));
                    if sub.run(st, &shared2).await.is_err() {
                        shared2.subscriber_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    drop(permit);
                    let _ = tx.send(Err(e));
                }
            }
        });
        ready.push(rx);
    }
    for (index, rx) in ready.into_iter().enumerate() {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(BenchError::Subscriber { index, source }),
            Err(_) => return Err(BenchError::Invalid("subscriber task died".into())),
        }
    }
    let connect_seconds = connect_start.elapsed().as_secs_f64();
    // Let the server settle before reading its idle memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = server_rss(&cfg.server_pids);
    if cfg.progress {
        eprintln!(
            "[bench] {} subscribers connected in {connect_seconds:.1}s",
            cfg.subscribers
        );
    }

    // Sampler: server peak RSS, progress line.
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (shared, stop, pids, progress) = (
            Arc::clone(&shared),
            Arc::clone(&sampler_stop),
            cfg.server_pids.clone(),
            cfg.progress,
        );
        tokio::spawn(async move {
            let mut peak = server_rss(&pids).unwrap_or(0);
            let mut last = (Instant::now(), shared.deliveries.load(Ordering::Relaxed));
            let mut tick = 0u32;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(r) = server_rss(&pids) {
                    peak = peak.max(r);
                }
                tick += 1;
                if progress && tick.is_multiple_of(10) {
                    let d = shared.deliveries.load(Ordering::Relaxed);
                    let rate = (d - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    last = (Instant::now(), d);
                    eprint!(
                        "\r[bench] {:>6.1}s  deliveries {:>11}  {:>10.0}/s  p99 {:>8.2} ms  lost {}   ",
                        shared.start.elapsed().as_secs_f64(),
                        d,
                        rate,
                        shared.latency.quantile(0.99) as f64 / 1e6,
                        shared.lost.load(Ordering::Relaxed)
                    );
                }
            }
            if progress {
                eprintln!();
            }
            peak
        })
    };

    let server_cpu_start = cpu_of(&cfg.server_pids);
    let aux_cpu_start = cpu_of(&cfg.aux_pids);
    let publish_start = Instant::now();
    let mut tasks = Vec::with_capacity(publishers.len());
    for (k, mut publisher) in publishers.into_iter().enumerate() {
        let (cfg, shared) = (cfg.clone(), Arc::clone(&shared));
        tasks.push(tokio::spawn(async move {
            if cfg.messages > 0 {
                publisher.publish_all(&cfg, &shared, k as u64).await?;
            }
            Ok::<_, std::io::Error>(publisher.await_acks(&shared, cfg.drain_timeout).await)
        }));
    }
    let mut acked: Option<u64> = None;
    let mut last_ack = publish_start;
    for t in tasks {
        let (n, at) = t
            .await
            .map_err(|_| BenchError::Invalid("publisher task died".into()))?
            .map_err(BenchError::Publisher)?;
        if let Some(n) = n {
            acked = Some(acked.unwrap_or(0) + n);
        }
        last_ack = last_ack.max(at);
    }
    let publish_seconds = publish_start.elapsed().as_secs_f64();
    let ack_seconds = (last_ack - publish_start).as_secs_f64();

    // Wait for deliveries to finish (or stall).
    let expected: u64 = (0..cfg.subscribers)
        .map(|i| per_channel_count(cfg.messages, cfg.channels, i % cfg.channels))
        .sum();
    let mut last = (Instant::now(), shared.deliveries.load(Ordering::Relaxed));
    while shared.deliveries.load(Ordering::Relaxed) + shared.lost.load(Ordering::Relaxed) < expected
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let d = shared.deliveries.load(Ordering::Relaxed);
        if d != last.1 {
            last = (Instant::now(), d);
        } else if last.0.elapsed() > cfg.drain_timeout {
            break;
        }
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let delta = |a: Option<Vec<f64>>, b: Option<Vec<f64>>| match (a, b) {
        (Some(a), Some(b)) => Some(b.iter().zip(&a).map(|(b, a)| b - a).collect::<Vec<_>>()),
        _ => None,
    };
    let server_cpu_each = delta(server_cpu_start, cpu_of(&cfg.server_pids));
    let aux_cpu = delta(aux_cpu_start, cpu_of(&cfg.aux_pids)).map(|v| v.iter().sum());
    sampler_stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.ok();
    shared.stop.store(true, Ordering::Relaxed);

    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let received_span = if deliveries > 0 { elapsed } else { 0.0 };
    let lost = expected
        .saturating_sub(deliveries.saturating_sub(shared.backwards.load(Ordering::Relaxed)));
    let q = |p: f64| shared.latency.quantile(p) as f64 / 1e6;
    Ok(Report {
        target: cfg.target.to_string(),
        transport: cfg.transport.to_string(),
        subscribers: cfg.subscribers,
        channels: cfg.channels,
        publishers: cfg.publishers,
        messages: cfg.messages,
        size: cfg.size,
        rate: cfg.rate,
        connect_seconds,
        publish_seconds,
        expected_deliveries: expected,
        deliveries,
        deliveries_per_second: if received_span > 0.0 {
            deliveries as f64 / received_span
        } else {
            0.0
        },
        lost,
        duplicated_or_reordered: shared.backwards.load(Ordering::Relaxed),
        latency_p50_ms: q(0.5),
        latency_p99_ms: q(0.99),
        latency_p999_ms: q(0.999),
        latency_max_ms: shared.latency.max() as f64 / 1e6,
        publish_errors: shared.publish_errors.load(Ordering::Relaxed),
        subscriber_failures: shared.subscriber_failures.load(Ordering::Relaxed),
        server_rss_before_kib: rss_before,
        server_rss_idle_kib: rss_idle,
        server_rss_peak_kib: peak.filter(|p| *p > 0),
        server_idle_bytes_per_connection: match (rss_before, rss_idle) {
            (Some(b), Some(i)) if cfg.subscribers > 0 => {
                Some((i.saturating_sub(b) * 1024) as f64 / cfg.subscribers as f64)
            }
            _ => None,
        },
        server_cpu_seconds: server_cpu_each.as_ref().map(|v| v.iter().sum()),
        server_cpu_seconds_each: server_cpu_each.unwrap_or_default(),
        aux_cpu_seconds: aux_cpu,
        publishes_acked: acked,
        publishes_per_second: acked
            .filter(|_| ack_seconds > 0.0)
            .map(|n| n as f64 / ack_seconds),
        bench_cpu_seconds: procstat::cpu_seconds(None).unwrap_or(0.0)
            - bench_cpu_start.unwrap_or(0.0),
    })
}

/// How many of `messages` (spread round-robin) go to channel `c` of `channels`.
pub(crate) fn per_channel_count(messages: u64, channels: usize, c: usize) -> u64 {
    let ch = channels as u64;
    messages / ch + u64::from((c as u64) < messages % ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_size_asked_and_parse_back() {
        for size in [10, 100, 1000] {
            let p = payload(123, 456_789, size);
            assert!(p.len() == size || size < 30, "{size}: {}", p.len());
            assert_eq!(find_num(&p, b"\"s\":"), Some(123));
            assert_eq!(find_num(&p, b"\"t\":"), Some(456_789));
        }
        let env =
            br#"{"event":"message","channel":"bench.0","offset":9,"data":{"s":8,"t":77,"p":"x"}}"#;
        assert_eq!(find_num(env, b"\"s\":"), Some(8));
        assert_eq!(per_channel_count(10, 3, 0), 4);
        assert_eq!(per_channel_count(10, 3, 2), 3);
    }
}
