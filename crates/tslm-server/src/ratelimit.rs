use std::num::NonZeroU32;

use tokio::time::Instant;

/// A token bucket: `rate` commands per second, bursts of up to `rate`. Hand-written because it is
/// ten lines and runs on tokio's clock (so tests can pause time); a crate would add a dependency
/// for no gain.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    /// The most tokens held (the burst).
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: NonZeroU32) -> Self {
        let rate = f64::from(rate.get());
        Self {
            rate,
            capacity: rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    /// `n` tokens per minute, bursts of up to `n`.
    pub(crate) fn per_minute(n: NonZeroU32) -> Self {
        let capacity = f64::from(n.get());
        Self {
            rate: capacity / 60.0,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Whether the bucket has refilled completely (nothing would be lost by forgetting it).
    pub(crate) fn is_full(&mut self) -> bool {
        self.refill();
        self.tokens >= self.capacity
    }

    /// How long until a token is available (zero when one is).
    pub(crate) fn time_to_token(&mut self) -> std::time::Duration {
        self.refill();
        if self.tokens >= 1.0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_bursts_up_to_rate_then_refills() {
        let mut b = TokenBucket::new(NonZeroU32::new(5).unwrap());
        assert_eq!((0..12).filter(|_| b.try_take()).count(), 5);
        tokio::time::advance(std::time::Duration::from_millis(400)).await;
        assert_eq!((0..12).filter(|_| b.try_take()).count(), 2);
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        assert_eq!((0..12).filter(|_| b.try_take()).count(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn per_minute_buckets_refill_over_a_minute() {
        let mut b = TokenBucket::per_minute(NonZeroU32::new(6).unwrap());
        assert_eq!((0..12).filter(|_| b.try_take()).count(), 6);
        assert_eq!(b.time_to_token(), std::time::Duration::from_secs(10));
        tokio::time::advance(std::time::Duration::from_secs(25)).await;
        assert_eq!((0..12).filter(|_| b.try_take()).count(), 2);
        tokio::time::advance(std::time::Duration::from_secs(600)).await;
        assert!(b.is_full());
        assert_eq!(b.time_to_token(), std::time::Duration::ZERO);
    }
}
