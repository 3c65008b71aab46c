//! A lock-free log-linear latency histogram (about 3% precision), shared by all subscriber tasks.

use std::sync::atomic::{AtomicU64, Ordering};

const LINEAR: u64 = 64;
const SUB: u64 = 32;
const BUCKETS: usize = 64 + 40 * 32;

pub struct Histogram {
    counts: Vec<AtomicU64>,
    max: AtomicU64,
}

fn index(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let exp = 63 - u64::from(us.leading_zeros());
    let sub = (us >> (exp - 5)) & (SUB - 1);
    ((LINEAR + (exp - 6) * SUB + sub) as usize).min(BUCKETS - 1)
}

fn lower_bound_us(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let exp = (i - LINEAR) / SUB + 6;
    let sub = (i - LINEAR) % SUB;
    (SUB + sub) << (exp - 5)
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, ns: u64) {
        self.counts[index(ns / 1000)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(ns, Ordering::Relaxed);
    }

    /// The `q` quantile, in nanoseconds (bucket lower bound).
    pub fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return lower_bound_us(i) * 1000;
            }
        }
        self.max()
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_precision() {
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us * 1000);
        }
        let p50 = h.quantile(0.5) as f64 / 1000.0;
        let p99 = h.quantile(0.99) as f64 / 1000.0;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "{p50}");
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.04, "{p99}");
        assert_eq!(h.max(), 10_000_000);
        for us in [0, 1, 63, 64, 65, 1000, 123_456, 10_000_000] {
            let lb = lower_bound_us(index(us));
            assert!(
                lb <= us && (us - lb) as f64 <= us as f64 * 0.04 + 1.0,
                "{us} -> {lb}"
            );
        }
    }
}
