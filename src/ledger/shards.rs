//! Sharded channel map: N independent mutexes so channels never block each other.
//!
//! Channel ids are keccak outputs, but a payer chooses the config (salt) and could grind ids
//! that collide in a predictable hash; the hasher is therefore keyed with a per-process random
//! key. It is a cheap multiply-mix, not SipHash: the keying, not the function, is the defence.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use parking_lot::Mutex;

use crate::ledger::channel::ChannelRecord;
use crate::typed_data::ChannelId;

/// A channel in memory: its record plus who holds it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) record: ChannelRecord,
    /// Token of the reservation holding the channel, if any (serialises requests).
    pub(crate) hold: Option<u64>,
}

/// Slots are boxed: a table holds only a key and a pointer per channel, so the slack of its
/// power-of-two growth (up to half the buckets empty) costs 40 bytes a bucket instead of a
/// whole record's ~450 (the scale bench: `docs/benchmarks.md`, "Scale").
pub(crate) type Shard = HashMap<ChannelId, Box<Slot>, IdHashBuilder>;

/// The shards and the hasher that picks one.
#[derive(Debug)]
pub(crate) struct Shards {
    shards: Box<[Mutex<Shard>]>,
    hasher: IdHashBuilder,
}

impl Shards {
    /// `count` is rounded up to a power of two (at least 1).
    pub(crate) fn new(count: usize) -> Self {
        let count = count.max(1).next_power_of_two();
        let hasher = IdHashBuilder {
            key: rand::random(),
        };
        let shards = (0..count)
            .map(|_| Mutex::new(HashMap::with_hasher(hasher)))
            .collect();
        Self { shards, hasher }
    }

    /// The shard owning `id`. Uses hash bits 32.. so that the in-shard `HashMap` (low bits
    /// for the bucket, top 7 bits for the control byte) still sees well-spread hashes.
    pub(crate) fn shard(&self, id: &ChannelId) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(id);
        let idx = ((h >> 32) as usize) & (self.shards.len() - 1);
        // In bounds: the length is a power of two and `idx` is masked to it.
        &self.shards[idx]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Mutex<Shard>> {
        self.shards.iter()
    }

    /// Number of shards.
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }
}

/// Builds [`IdHasher`]s sharing one random key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdHashBuilder {
    key: u64,
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.key }
    }
}

/// Keyed multiply-mix over 8-byte words.
#[derive(Debug)]
pub(crate) struct IdHasher {
    state: u64,
}

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = (self.state ^ u64::from_le_bytes(word))
                .wrapping_mul(MUL)
                .rotate_left(29);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // Only the length prefix of the fixed 32-byte id arrives here; it carries no entropy.
    }

    fn finish(&self) -> u64 {
        // fmix64 from MurmurHash3: every input bit affects every output bit.
        let mut h = self.state;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::B256;

    #[test]
    fn shard_count_is_a_power_of_two_and_ids_spread_over_all_shards() {
        let shards = Shards::new(48);
        assert_eq!(shards.shards.len(), 64);
        let mut hits = vec![0usize; 64];
        for i in 0u32..6400 {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            let id = ChannelId(alloy_primitives::keccak256(b));
            let shard = shards.shard(&id) as *const _;
            let idx = shards.shards.iter().position(|s| std::ptr::eq(s, shard));
            if let Some(idx) = idx {
                hits[idx] += 1;
            }
        }
        assert_eq!(hits.iter().sum::<usize>(), 6400);
        assert!(hits.iter().all(|&n| n > 40), "uneven spread: {hits:?}");
    }

    #[test]
    fn different_keys_hash_the_same_id_differently() {
        let id = ChannelId(B256::repeat_byte(3));
        let a = IdHashBuilder { key: 1 }.hash_one(id);
        let b = IdHashBuilder { key: 2 }.hash_one(id);
        assert_ne!(a, b);
    }
}
