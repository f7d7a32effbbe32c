//! Token buckets by key, bounded in memory.
//!
//! A key without a bucket has a full one: a bucket that has refilled to its burst carries no
//! information and is dropped whenever room is needed. When a map is full of buckets still
//! refilling (an attacker rotating keys faster than they refill), the ones closest to full
//! (the earliest `full_at`) are evicted: each eviction hands at most a partly spent burst
//! back to one key, and memory stays at `max_tracked` buckets.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Shards of a map: keys spread over them so concurrent requests rarely share a lock.
const SHARDS: usize = 16;

/// A bucket's parameters: `rate` tokens per second refilled, at most `burst` held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second (> 0).
    pub per_second: f64,
    /// Capacity (≥ 1); a new key starts with a full bucket.
    pub burst: f64,
}

impl Rate {
    /// Nanoseconds to refill `tokens`.
    fn nanos_for(self, tokens: f64) -> u64 {
        let n = (tokens / self.per_second * 1e9).ceil();
        if n.is_finite() && n > 0.0 {
            // Saturating: a bucket that takes longer than u64 nanoseconds never refills.
            n.min(u64::MAX as f64) as u64
        } else {
            0
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    tokens: f64,
    /// When `tokens` was computed (nanoseconds since the map's epoch).
    at: u64,
    /// When the bucket will be full again at its rate: from then on it may be dropped.
    full_at: u64,
}

impl Bucket {
    /// A bucket refilling until `full_at` (tests of eviction).
    #[cfg(test)]
    pub(super) fn refilling_until(full_at: u64) -> Self {
        Self {
            tokens: 0.0,
            at: 0,
            full_at,
        }
    }

    fn full(rate: Rate, now: u64) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
            full_at: now,
        }
    }

    /// Tokens at `now` (refilled, capped at the burst; a burst lowered by a reload caps too).
    fn level(&self, rate: Rate, now: u64) -> f64 {
        let elapsed = now.saturating_sub(self.at) as f64 / 1e9;
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// Token buckets by key, at most `max_tracked` of them.
pub struct BucketMap<K> {
    shards: Box<[Mutex<HashMap<K, Bucket>>]>,
    /// Picks the shard; keys are chosen by clients, so the hash is keyed (SipHash).
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
}

impl<K> std::fmt::Debug for BucketMap<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketMap")
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> BucketMap<K> {
    /// A map holding at most `max_tracked` buckets (rounded up to a multiple of the shards).
    pub fn new(max_tracked: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: max_tracked.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    /// The map's clock: time since it was made.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Takes a token from `key`'s bucket at time `now` (see [`Self::now`]); `Err(wait)`: none
    /// left, one will be there after `wait`.
    pub fn take(&self, key: &K, rate: Rate, now: Duration) -> Result<(), Duration> {
        let now = nanos(now);
        let mut shard = self.shards[self.shard(key)].lock();
        let bucket = match shard.get_mut(key) {
            Some(b) => b,
            None => {
                if shard.len() >= self.per_shard {
                    make_room(&mut shard, self.per_shard, now);
                }
                shard.entry(key.clone()).or_insert(Bucket::full(rate, now))
            }
        };
        let level = bucket.level(rate, now);
        if level < 1.0 {
            return Err(Duration::from_nanos(rate.nanos_for(1.0 - level)));
        }
        let tokens = level - 1.0;
        *bucket = Bucket {
            tokens,
            at: now,
            full_at: now.saturating_add(rate.nanos_for(rate.burst - tokens)),
        };
        Ok(())
    }

    /// Whether `key` has a token at `now`, without taking it (and without making a bucket).
    pub fn peek(&self, key: &K, rate: Rate, now: Duration) -> Result<(), Duration> {
        let now = nanos(now);
        let shard = self.shards[self.shard(key)].lock();
        let Some(bucket) = shard.get(key) else {
            return Ok(());
        };
        let level = bucket.level(rate, now);
        if level < 1.0 {
            return Err(Duration::from_nanos(rate.nanos_for(1.0 - level)));
        }
        Ok(())
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &K) -> usize {
        // The modulo keeps the index in range whatever the hash.
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }
}

/// Frees room in a full shard: first every bucket full again (dropping it changes nothing),
/// then, if that freed less than an eighth, the buckets closest to full until an eighth is
/// free. Amortised: one scan buys room for an eighth of the shard's inserts.
pub(super) fn make_room<K: Hash + Eq + Clone>(
    shard: &mut HashMap<K, Bucket>,
    cap: usize,
    now: u64,
) {
    shard.retain(|_, b| b.full_at > now);
    let target = cap - cap.div_ceil(8);
    if shard.len() <= target {
        return;
    }
    let excess = shard.len() - target;
    let mut by_full_at: Vec<(u64, K)> = shard.iter().map(|(k, b)| (b.full_at, k.clone())).collect();
    by_full_at.select_nth_unstable_by_key(excess - 1, |(full_at, _)| *full_at);
    for (_, key) in by_full_at.iter().take(excess) {
        shard.remove(key);
    }
    metrics::counter!(crate::telemetry::RATE_LIMIT_EVICTIONS).increment(excess as u64);
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
