//! `tslm bench --churn-seconds N`: memory over time under churn (TSLM only). Subscribers
//! reconnect every few seconds and resume where they stopped (`start` with their epoch and last
//! offset); the publisher publishes messages of varied sizes, each with a `msg_id`, retries some
//! of them with the same `msg_id`, and reconnects now and then. The server's RSS is sampled at a
//! fixed interval; the report gives the samples and the slope of RSS (least squares) after a
//! warm-up, during which the channels' backlogs and de-duplication tables fill.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::ws::{self, OP_TEXT};
use crate::{BenchError, channel_name, find_num, procstat, raise_fd_limit, source_for};

/// What a churn run does.
#[derive(Debug, Clone)]
pub struct ChurnConfig {
    pub sub_addr: SocketAddr,
    pub pub_addr: SocketAddr,
    pub subscribers: usize,
    pub channels: usize,
    /// Messages published per second, in all.
    pub rate: u64,
    /// Payload sizes are spread evenly between these bounds (bytes).
    pub min_size: usize,
    pub max_size: usize,
    /// Every subscriber stays connected between these bounds, then reconnects and resumes.
    pub min_connected: Duration,
    pub max_connected: Duration,
    /// One publish in this many is sent twice with the same `msg_id` (a retry).
    pub retry_every: u64,
    /// The publisher reconnects after this long.
    pub publisher_connected: Duration,
    /// How long the whole run lasts.
    pub duration: Duration,
    /// Samples before this are reported but left out of the slope.
    pub warmup: Duration,
    /// RSS sampling interval.
    pub sample_every: Duration,
    pub sources: u8,
    pub server_pid: Option<u32>,
    pub progress: bool,
}

/// What a churn run measured.
#[derive(Debug, Clone, Default)]
pub struct ChurnReport {
    /// (seconds since the start, server RSS in KiB).
    pub samples: Vec<(f64, u64)>,
    /// Least-squares slope of RSS after the warm-up, MB (10^6 bytes) per minute.
    pub slope_mb_per_minute: Option<f64>,
    pub rss_after_warmup_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub published: u64,
    pub retries: u64,
    pub duplicates_acknowledged: u64,
    pub deliveries: u64,
    pub reconnects: u64,
    pub resumed_without_loss: u64,
    pub resumed_with_loss: u64,
    pub errors: u64,
}

impl ChurnReport {
    /// One JSON object, for scripts.
    pub fn to_json(&self) -> String {
        let samples: Vec<String> = self
            .samples
            .iter()
            .map(|(t, r)| format!("[{t:.1},{r}]"))
            .collect();
        let opt = |v: Option<String>| v.unwrap_or_else(|| "null".into());
        format!(
            concat!(
                "{{\"slope_mb_per_minute\":{},\"rss_after_warmup_kib\":{},\"rss_end_kib\":{},",
                "\"published\":{},\"retries\":{},\"duplicates_acknowledged\":{},\"deliveries\":{},",
                "\"reconnects\":{},\"resumed_without_loss\":{},\"resumed_with_loss\":{},\"errors\":{},",
                "\"samples\":[{}]}}"
            ),
            opt(self.slope_mb_per_minute.map(|s| format!("{s:.3}"))),
            opt(self.rss_after_warmup_kib.map(|r| r.to_string())),
            opt(self.rss_end_kib.map(|r| r.to_string())),
            self.published,
            self.retries,
            self.duplicates_acknowledged,
            self.deliveries,
            self.reconnects,
            self.resumed_without_loss,
            self.resumed_with_loss,
            self.errors,
            samples.join(","),
        )
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    retries: AtomicU64,
    duplicates: AtomicU64,
    deliveries: AtomicU64,
    reconnects: AtomicU64,
    recovered: AtomicU64,
    lossy: AtomicU64,
    errors: AtomicU64,
}

/// A small deterministic generator (xorshift64*), one per task: no dependency, reproducible runs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..=hi` (near enough).
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }
}

/// Least-squares slope of `points` (x, y); `None` with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

/// Runs one churn test until `cfg.duration` has passed.
pub async fn run_churn(cfg: ChurnConfig) -> Result<ChurnReport, BenchError> {
    if cfg.channels == 0 || cfg.subscribers == 0 || cfg.rate == 0 {
        return Err(BenchError::Invalid(
            "subscribers, channels and rate must be at least 1".into(),
        ));
    }
    if cfg.min_size == 0 || cfg.min_size > cfg.max_size || cfg.min_connected > cfg.max_connected {
        return Err(BenchError::Invalid("a range's bounds are reversed".into()));
    }
    let limit = raise_fd_limit();
    if (cfg.subscribers as u64 + 64) > limit {
        return Err(BenchError::Invalid(format!(
            "{} subscribers need more file descriptors than this process may open ({limit})",
            cfg.subscribers
        )));
    }
    let cfg = Arc::new(cfg);
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();

    // Channels first: the first publisher connection creates them.
    let mut publisher = connect_publisher(&cfg, true, &counters)
        .await
        .map_err(BenchError::Publisher)?;
    let mut tasks = Vec::new();
    for i in 0..cfg.subscribers {
        let (cfg, counters, stop) = (Arc::clone(&cfg), Arc::clone(&counters), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            subscriber(i, &cfg, &counters, &stop).await;
        }));
    }

    let sampler = {
        let (cfg, counters, stop) = (Arc::clone(&cfg), Arc::clone(&counters), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut next = start + cfg.sample_every;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next.into()).await;
                next += cfg.sample_every;
                let t = start.elapsed().as_secs_f64();
                if let Some(r) = cfg.server_pid.and_then(procstat::rss_kib) {
                    samples.push((t, r));
                    if cfg.progress {
                        eprintln!(
                            "[churn] {t:>7.1}s  rss {:>8} KiB  published {}  deliveries {}  reconnects {}",
                            r,
                            counters.published.load(Ordering::Relaxed),
                            counters.deliveries.load(Ordering::Relaxed),
                            counters.reconnects.load(Ordering::Relaxed),
                        );
                    }
                }
            }
            samples
        })
    };

    // The publisher: paced, msg_id on every publish, some retried, a reconnection now and then.
    let mut rng = Rng::new(0x5eed);
    let mut seq: u64 = 0;
    let mut connected_at = Instant::now();
    let mut out = Vec::new();
    let tick = Duration::from_millis(10);
    while start.elapsed() < cfg.duration {
        tokio::time::sleep(tick).await;
        let due = (start.elapsed().as_secs_f64() * cfg.rate as f64) as u64;
        out.clear();
        while seq < due {
            let c = (seq % cfg.channels as u64) as usize;
            let size = rng.between(cfg.min_size as u64, cfg.max_size as u64) as usize;
            let req = publish_request(seq, &channel_name(c), size);
            ws::encode(OP_TEXT, &req, &mut out);
            counters.published.fetch_add(1, Ordering::Relaxed);
            if cfg.retry_every > 0 && seq.is_multiple_of(cfg.retry_every) {
                ws::encode(OP_TEXT, &req, &mut out);
                counters.retries.fetch_add(1, Ordering::Relaxed);
            }
            seq += 1;
        }
        if publisher.write_all(&out).await.is_err()
            || connected_at.elapsed() > cfg.publisher_connected
        {
            drop(publisher);
            publisher = connect_publisher(&cfg, false, &counters)
                .await
                .map_err(BenchError::Publisher)?;
            connected_at = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let samples = sampler.await.unwrap_or_default();
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= cfg.warmup.as_secs_f64())
        .map(|(t, r)| (*t / 60.0, *r as f64 * 1024.0 / 1e6))
        .collect();
    let c = &counters;
    Ok(ChurnReport {
        slope_mb_per_minute: slope(&steady),
        rss_after_warmup_kib: samples
            .iter()
            .find(|(t, _)| *t >= cfg.warmup.as_secs_f64())
            .map(|s| s.1),
        rss_end_kib: samples.last().map(|s| s.1),
        samples,
        published: c.published.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        duplicates_acknowledged: c.duplicates.load(Ordering::Relaxed),
        deliveries: c.deliveries.load(Ordering::Relaxed),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        resumed_without_loss: c.recovered.load(Ordering::Relaxed),
        resumed_with_loss: c.lossy.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
    })
}

/// `{"op":"publish","channel":…,"msg_id":"m-SEQ","data":{"s":SEQ,"p":"xx…"}}`.
fn publish_request(seq: u64, channel: &str, size: usize) -> Vec<u8> {
    let mut req = format!(
        r#"{{"op":"publish","channel":"{channel}","msg_id":"m-{seq}","data":{{"s":{seq},"p":""#
    )
    .into_bytes();
    req.resize(req.len() + size, b'x');
    req.extend_from_slice(b"\"}}");
    req
}

/// A publisher connection (creating the channels when `create`), its replies read and counted
/// by a task of its own until the connection is dropped.
async fn connect_publisher(
    cfg: &Arc<ChurnConfig>,
    create: bool,
    counters: &Arc<Counters>,
) -> std::io::Result<OwnedWriteHalf> {
    let (mut stream, leftover) = ws::connect(cfg.pub_addr, None, "/", Some("tslm.v1")).await?;
    let mut reader = ws::Reader::new(leftover, 4096);
    if create {
        for c in 0..cfg.channels {
            let mut out = Vec::new();
            let req = format!(
                r#"{{"op":"create","id":{c},"channel":"{}"}}"#,
                channel_name(c)
            );
            ws::encode(OP_TEXT, req.as_bytes(), &mut out);
            stream.write_all(&out).await?;
            let want = format!("{{\"id\":{c},\"ok\":true");
            crate::target::await_text(&mut stream, &mut reader, |p| p.starts_with(want.as_bytes()))
                .await?;
        }
    }
    let (mut read, write) = stream.into_split();
    let counters = Arc::clone(counters);
    tokio::spawn(async move {
        let mut frames = ws::Reader::new(Vec::new(), 64 * 1024);
        while let Ok(true) = frames
            .read_frames(&mut read, |op, _, p| {
                if op == OP_TEXT {
                    if contains(p, b"\"duplicate\":true") {
                        counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    } else if contains(p, b"\"ok\":false") {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .await
        {}
    });
    Ok(write)
}

/// One subscriber: connect, subscribe (resuming from what it saw last), read for a while,
/// drop the connection, again, until `stop`.
async fn subscriber(i: usize, cfg: &ChurnConfig, counters: &Counters, stop: &AtomicBool) {
    let mut rng = Rng::new(i as u64 + 1);
    let channel = channel_name(i % cfg.channels);
    let source = source_for(i, cfg.sources, cfg.sub_addr);
    // (epoch, last offset seen)
    let mut position: Option<(String, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let stay = Duration::from_millis(rng.between(
            cfg.min_connected.as_millis() as u64,
            cfg.max_connected.as_millis() as u64,
        ));
        match session(cfg, source, &channel, &mut position, stay, counters, stop).await {
            Ok(()) => {}
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        counters.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

async fn session(
    cfg: &ChurnConfig,
    source: Option<std::net::IpAddr>,
    channel: &str,
    position: &mut Option<(String, u64)>,
    stay: Duration,
    counters: &Counters,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let (mut stream, leftover) = ws::connect(cfg.sub_addr, source, "/", Some("tslm.v1")).await?;
    let mut reader = ws::Reader::new(leftover, 4096);
    let req = match position {
        Some((epoch, offset)) => format!(
            r#"{{"op":"subscribe","id":1,"channel":"{channel}","start":{{"epoch":"{epoch}","offset":{offset}}}}}"#
        ),
        None => format!(r#"{{"op":"subscribe","id":1,"channel":"{channel}"}}"#),
    };
    let mut out = Vec::new();
    ws::encode(OP_TEXT, req.as_bytes(), &mut out);
    stream.write_all(&out).await?;
    let until = tokio::time::Instant::now() + stay;
    let resuming = position.is_some();
    let mut pongs = Vec::new();
    loop {
        let read = tokio::time::timeout_at(
            until,
            reader.read_frames(&mut stream, |op, _, p| match op {
                OP_TEXT => {
                    if p.starts_with(b"{\"event\":\"message\"") {
                        counters.deliveries.fetch_add(1, Ordering::Relaxed);
                        if let (Some(pos), Some(o)) =
                            (position.as_mut(), find_num(p, b"\"offset\":"))
                        {
                            pos.1 = o;
                        }
                    } else if p.starts_with(b"{\"id\":1,") {
                        if !p.starts_with(b"{\"id\":1,\"ok\":true") {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(epoch) = text_after(p, b"\"epoch\":\"") {
                            let from = find_num(p, b"\"from\":").unwrap_or(1);
                            *position = Some((epoch, from.saturating_sub(1)));
                            if resuming {
                                if contains(p, b"\"recovered\":false") {
                                    counters.lossy.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    counters.recovered.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    } else if p.starts_with(b"{\"event\":\"gap\"")
                        && let (Some(pos), Some(to)) = (position.as_mut(), find_num(p, b"\"to\":"))
                    {
                        pos.1 = to;
                    }
                }
                ws::OP_PING => ws::encode(ws::OP_PONG, p, &mut pongs),
                _ => {}
            }),
        )
        .await;
        match read {
            Err(_) => return Ok(()),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Err(e)) => return Err(e),
        }
        if !pongs.is_empty() {
            stream.write_all(&pongs).await?;
            pongs.clear();
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn contains(b: &[u8], needle: &[u8]) -> bool {
    b.windows(needle.len()).any(|w| w == needle)
}

/// The string value starting right after `key` (up to the next `"`).
fn text_after(b: &[u8], key: &[u8]) -> Option<String> {
    let at = b.windows(key.len()).position(|w| w == key)? + key.len();
    let len = b[at..].iter().position(|&c| c == b'"')?;
    Some(String::from_utf8_lossy(&b[at..at + len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&pts).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 1.0)]), None);
    }

    #[test]
    fn requests_and_replies() {
        let r = publish_request(7, "bench.0", 5);
        assert_eq!(
            r,
            br#"{"op":"publish","channel":"bench.0","msg_id":"m-7","data":{"s":7,"p":"xxxxx"}}"#
        );
        let reply = br#"{"id":1,"ok":true,"epoch":"ab12","offset":9,"from":4}"#;
        assert_eq!(text_after(reply, b"\"epoch\":\"").as_deref(), Some("ab12"));
        let mut rng = Rng::new(3);
        assert!((0..100).all(|_| (5..=9).contains(&rng.between(5, 9))));
    }
}
