//! Token-bucket rate limits per key (a client token, a peer node).
//!
//! Each key has a bucket holding up to `burst` tokens that refills at
//! `per_second`; a request takes some tokens or is told how long to wait.
//! Memory is bounded: at most `max_keys` buckets are kept, the least
//! recently used forgotten first (a forgotten key starts again with a full
//! bucket, which only ever lets it do less harm than `burst` allows).

use std::hash::{Hash, Hasher};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<lru::LruCache<u64, Bucket>>,
}

impl RateLimiter {
    /// None when `per_second` is 0 (no limit). `burst` below 1 is taken as 1.
    pub fn new(per_second: u64, burst: u64, max_keys: usize) -> Option<RateLimiter> {
        if per_second == 0 {
            return None;
        }
        let max_keys = NonZeroUsize::new(max_keys.max(1)).expect("at least 1");
        Some(RateLimiter {
            per_second: per_second as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(lru::LruCache::new(max_keys)),
        })
    }

    /// Takes `cost` tokens from `key`'s bucket at `now`. Err(wait): the
    /// bucket lacks them; they will be there after `wait` (nothing taken).
    /// A cost above the burst is capped at the burst, so it can pass once
    /// the bucket is full rather than never.
    pub fn take(&self, key: u64, cost: f64, now: Instant) -> Result<(), Duration> {
        let cost = cost.clamp(0.0, self.burst);
        let mut buckets = self.buckets.lock();
        let bucket = self.refilled(&mut buckets, key, now);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let missing = cost - bucket.tokens;
            Err(Duration::from_secs_f64(missing / self.per_second))
        }
    }

    /// Whether `key` may go ahead at `now` (its bucket holds a token, or it
    /// has none yet), without taking anything: see [`RateLimiter::charge`].
    /// Err(wait): not before `wait`.
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock();
        let Some(bucket) = buckets.get(&key) else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        let tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }

    /// Takes `cost` tokens from `key`'s bucket after the fact (creating it
    /// full if new). The bucket may go below zero, down to minus the burst:
    /// the key then waits for the debt to be paid. Used where only the
    /// outcome tells whether a request counts (an authenticated one does).
    pub fn charge(&self, key: u64, cost: f64, now: Instant) {
        let mut buckets = self.buckets.lock();
        let bucket = self.refilled(&mut buckets, key, now);
        bucket.tokens = (bucket.tokens - cost).max(-self.burst);
    }

    /// `key`'s bucket (created full if new), refilled up to `now`.
    fn refilled<'a>(
        &self,
        buckets: &'a mut lru::LruCache<u64, Bucket>,
        key: u64,
        now: Instant,
    ) -> &'a mut Bucket {
        let bucket = buckets.get_or_insert_mut(key, || Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        bucket
    }

    /// Takes `cost` tokens, waiting as long as it takes (backpressure).
    pub async fn take_waiting(&self, key: u64, cost: f64) {
        while let Err(wait) = self.take(key, cost, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The bucket key of a text (a token, a node id).
pub fn key_of(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = RateLimiter::new(10, 5, 16).unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.take(1, 1.0, t0).is_ok());
        }
        let wait = limiter.take(1, 1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // After 100 ms exactly one more token is there.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.take(1, 1.0, t1).is_ok());
        assert!(limiter.take(1, 1.0, t1).is_err());
        // Other keys have their own bucket.
        assert!(limiter.take(2, 5.0, t1).is_ok());
        // The bucket never holds more than the burst.
        let later = t1 + Duration::from_secs(60);
        assert!(limiter.take(1, 5.0, later).is_ok());
        assert!(limiter.take(1, 1.0, later).is_err());
    }

    #[test]
    fn a_cost_above_the_burst_passes_when_the_bucket_is_full() {
        let limiter = RateLimiter::new(100, 10, 16).unwrap();
        let t0 = Instant::now();
        assert!(limiter.take(7, 500.0, t0).is_ok());
        let wait = limiter.take(7, 500.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn check_then_charge_counts_only_what_is_charged() {
        let limiter = RateLimiter::new(2, 2, 16).unwrap();
        let t0 = Instant::now();
        // Unknown keys pass and create nothing (refused tokens cost no memory).
        assert!(limiter.check(9, t0).is_ok());
        assert_eq!(limiter.buckets.lock().len(), 0);
        limiter.charge(9, 1.0, t0);
        limiter.charge(9, 1.0, t0);
        let wait = limiter.check(9, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert!(limiter.check(9, t0 + Duration::from_millis(500)).is_ok());
        // Debt is bounded by the burst.
        for _ in 0..100 {
            limiter.charge(9, 1.0, t0);
        }
        let wait = limiter.check(9, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.5).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn zero_means_no_limit_and_keys_are_bounded() {
        assert!(RateLimiter::new(0, 10, 16).is_none());
        let limiter = RateLimiter::new(1, 1, 2).unwrap();
        let t0 = Instant::now();
        for key in 0..100 {
            assert!(limiter.take(key, 1.0, t0).is_ok());
        }
        assert_eq!(limiter.buckets.lock().len(), 2);
    }
}
