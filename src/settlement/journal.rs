//! The claim journal: every claim batch is written (and flushed) **before** it is sent, and
//! removed once its outcome is reflected in the ledger. Whatever is still in the journal on
//! start, or after a send that may or may not have been mined, is reconciled with chain:
//! the journalled channels' `totalClaimed` is read back and applied, and the rows still
//! below their intended total are simply claimable again. Claims are cumulative totals, so
//! re-sending a row is harmless on chain; the journal is what makes sure no batch whose fate
//! is unknown is forgotten, and tells the restart exactly which channels to re-read.
//!
//! Value layout, like the channel records: `[format: u8][bincode 2 of EntryV1]`, keyed by a
//! big-endian `u64` batch id, increasing.

use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, hex};
use serde::{Deserialize, Serialize};

use crate::ledger::Claimable;
use crate::store::StoreError;
use crate::typed_data::{ChannelConfig, ChannelId};

/// Format byte of [`EntryV1`].
pub const JOURNAL_FORMAT_V1: u8 = 1;

/// Where a journalled batch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchState {
    /// Written, about to be sent (or the process died before the broadcast).
    Pending,
    /// A transaction was broadcast; its fate was not confirmed (timeout, RPC failure, crash).
    Sent,
    /// Mined in this block and applied to the ledger; kept until the block has enough
    /// confirmations, then read back once more in case a reorg dropped it.
    Mined(u64),
}

/// One journalled batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    /// Batch id (journal key).
    pub id: u64,
    /// State.
    pub state: BatchState,
    /// The rows as they were (to be) sent; `claim_total` is the intended `totalClaimed`.
    pub rows: Vec<Claimable>,
    /// Transaction hashes known for the batch.
    pub tx_hashes: Vec<B256>,
    /// Unix seconds when the batch was journalled.
    pub created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct RowV1 {
    channel_id: [u8; 32],
    payer: [u8; 20],
    payer_authorizer: [u8; 20],
    receiver: [u8; 20],
    receiver_authorizer: [u8; 20],
    token: [u8; 20],
    withdraw_delay: u64,
    salt: [u8; 32],
    max_claimable: u128,
    signature: Vec<u8>,
    claim_total: u128,
    onchain_total_claimed: u128,
    withdraw_requested_at: u64,
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    state: BatchState,
    rows: Vec<RowV1>,
    tx_hashes: Vec<[u8; 32]>,
    created_at: u64,
}

fn row_to_disk(r: &Claimable) -> RowV1 {
    let c = &r.config;
    RowV1 {
        channel_id: r.channel_id.0.0,
        payer: c.payer.0.0,
        payer_authorizer: c.payerAuthorizer.0.0,
        receiver: c.receiver.0.0,
        receiver_authorizer: c.receiverAuthorizer.0.0,
        token: c.token.0.0,
        withdraw_delay: c.withdrawDelay.to::<u64>(),
        salt: c.salt.0,
        max_claimable: r.max_claimable,
        signature: r.signature.to_vec(),
        claim_total: r.claim_total,
        onchain_total_claimed: r.onchain_total_claimed,
        withdraw_requested_at: r.withdraw_requested_at,
    }
}

fn row_from_disk(r: RowV1) -> Claimable {
    Claimable {
        channel_id: ChannelId(B256::from(r.channel_id)),
        config: ChannelConfig {
            payer: Address::from(r.payer),
            payerAuthorizer: Address::from(r.payer_authorizer),
            receiver: Address::from(r.receiver),
            receiverAuthorizer: Address::from(r.receiver_authorizer),
            token: Address::from(r.token),
            withdrawDelay: U40::saturating_from(r.withdraw_delay),
            salt: B256::from(r.salt),
        },
        max_claimable: r.max_claimable,
        signature: Bytes::from(r.signature),
        claim_total: r.claim_total,
        onchain_total_claimed: r.onchain_total_claimed,
        withdraw_requested_at: r.withdraw_requested_at,
    }
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode(entry: &JournalEntry) -> Result<Vec<u8>, StoreError> {
    let disk = EntryV1 {
        state: entry.state,
        rows: entry.rows.iter().map(row_to_disk).collect(),
        tx_hashes: entry.tx_hashes.iter().map(|h| h.0).collect(),
        created_at: entry.created_at,
    };
    let mut out = vec![JOURNAL_FORMAT_V1];
    bincode::serde::encode_into_std_write(&disk, &mut out, bincode_config()).map_err(|source| {
        StoreError::Encode {
            channel_id: entry
                .rows
                .first()
                .map(|r| r.channel_id)
                .unwrap_or(ChannelId(B256::ZERO)),
            source,
        }
    })?;
    Ok(out)
}

fn decode(key: &[u8], value: &[u8]) -> Result<JournalEntry, StoreError> {
    let corrupt = |what, source| StoreError::Corrupt {
        key: hex::encode(key),
        what,
        source,
    };
    let id = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("journal key is not 8 bytes", None))?;
    let (format, payload) = value
        .split_first()
        .ok_or_else(|| corrupt("empty journal entry", None))?;
    if *format != JOURNAL_FORMAT_V1 {
        return Err(corrupt("unknown journal format byte", None));
    }
    let (disk, used): (EntryV1, usize) =
        bincode::serde::decode_from_slice(payload, bincode_config())
            .map_err(|e| corrupt("journal entry does not decode", Some(e)))?;
    if used != payload.len() {
        return Err(corrupt("trailing bytes after journal entry", None));
    }
    Ok(JournalEntry {
        id,
        state: disk.state,
        rows: disk.rows.into_iter().map(row_from_disk).collect(),
        tx_hashes: disk.tx_hashes.into_iter().map(B256::from).collect(),
        created_at: disk.created_at,
    })
}

/// The journal tree plus the flush that makes each write durable before a send.
pub struct ClaimJournal {
    tree: sled::Tree,
    /// Next batch id: one above the highest open batch at open time, then counting up.
    next_id: std::sync::atomic::AtomicU64,
    flush: Box<dyn Fn() -> Result<(), StoreError> + Send + Sync>,
}

impl std::fmt::Debug for ClaimJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimJournal")
            .field("entries", &self.tree.len())
            .finish()
    }
}

impl ClaimJournal {
    /// The journal in `store`'s [`crate::store::CLAIM_JOURNAL_TREE`]; writes are flushed
    /// (and `fdatasync`ed if the store does that) before they return.
    pub fn open(store: &std::sync::Arc<crate::SledStore>) -> Result<Self, StoreError> {
        let tree = store.claim_journal()?;
        let store = std::sync::Arc::clone(store);
        let next = match tree.last()? {
            Some((k, _)) => <[u8; 8]>::try_from(k.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0)
                .saturating_add(1),
            None => 1,
        };
        Ok(Self {
            next_id: std::sync::atomic::AtomicU64::new(next),
            tree,
            flush: Box::new(move || store.flush_now()),
        })
    }

    /// Journals a new batch of `rows` as [`BatchState::Pending`], durably. Returns its id.
    pub fn begin(&self, rows: &[Claimable], now: u64) -> Result<u64, StoreError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = JournalEntry {
            id,
            state: BatchState::Pending,
            rows: rows.to_vec(),
            tx_hashes: Vec::new(),
            created_at: now,
        };
        self.put(&entry)?;
        Ok(id)
    }

    /// Marks a batch [`BatchState::Sent`] with its known transaction hashes, durably.
    pub fn mark_sent(&self, id: u64, hashes: &[B256]) -> Result<(), StoreError> {
        let Some(mut entry) = self.get(id)? else {
            return Ok(());
        };
        entry.state = BatchState::Sent;
        for h in hashes {
            if !entry.tx_hashes.contains(h) {
                entry.tx_hashes.push(*h);
            }
        }
        self.put(&entry)
    }

    /// Marks a batch [`BatchState::Mined`] in `block` by `hash`. Not flushed: losing it in a
    /// crash leaves the batch `Pending`, which is reconciled the same way.
    pub fn mark_mined(&self, id: u64, block: u64, hash: B256) -> Result<(), StoreError> {
        let Some(mut entry) = self.get(id)? else {
            return Ok(());
        };
        entry.state = BatchState::Mined(block);
        if !entry.tx_hashes.contains(&hash) {
            entry.tx_hashes.push(hash);
        }
        self.tree.insert(entry.id.to_be_bytes(), encode(&entry)?)?;
        Ok(())
    }

    /// Removes a batch whose outcome the ledger now reflects. Not flushed: if the removal is
    /// lost in a crash, the batch is reconciled once more, which changes nothing.
    pub fn finish(&self, id: u64) -> Result<(), StoreError> {
        self.tree.remove(id.to_be_bytes())?;
        Ok(())
    }

    /// One batch.
    pub fn get(&self, id: u64) -> Result<Option<JournalEntry>, StoreError> {
        let key = id.to_be_bytes();
        self.tree.get(key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Every open batch, oldest first.
    pub fn open_batches(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Number of open batches.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when no batch is open.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    fn put(&self, entry: &JournalEntry) -> Result<(), StoreError> {
        self.tree.insert(entry.id.to_be_bytes(), encode(entry)?)?;
        (self.flush)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, SledOptions, SledStore};
    use std::sync::Arc;

    fn row(n: u8) -> Claimable {
        Claimable {
            channel_id: ChannelId(B256::repeat_byte(n)),
            config: ChannelConfig {
                payer: Address::repeat_byte(1),
                payerAuthorizer: Address::repeat_byte(2),
                receiver: Address::repeat_byte(3),
                receiverAuthorizer: Address::repeat_byte(4),
                token: Address::repeat_byte(5),
                withdrawDelay: U40::from(900u64),
                salt: B256::repeat_byte(6),
            },
            max_claimable: 1_000 + u128::from(n),
            signature: Bytes::from(vec![n; 65]),
            claim_total: 900,
            onchain_total_claimed: 100,
            withdraw_requested_at: 7,
        }
    }

    #[test]
    fn batches_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = {
            let store = Arc::new(
                SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
                    .expect("open"),
            );
            let journal = ClaimJournal::open(&store).expect("journal");
            let a = journal.begin(&[row(1), row(2)], 10).expect("begin");
            let b = journal.begin(&[row(3)], 11).expect("begin");
            journal
                .mark_sent(a, &[B256::repeat_byte(0xaa)])
                .expect("sent");
            (a, b)
        };
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
                .expect("reopen"),
        );
        let journal = ClaimJournal::open(&store).expect("journal");
        let open = journal.open_batches().expect("list");
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].id, a);
        assert_eq!(open[0].state, BatchState::Sent);
        assert_eq!(open[0].rows, vec![row(1), row(2)]);
        assert_eq!(open[0].tx_hashes, vec![B256::repeat_byte(0xaa)]);
        assert_eq!((open[1].id, open[1].state), (b, BatchState::Pending));
        journal.finish(a).expect("finish");
        assert_eq!(journal.len(), 1);
    }

    #[test]
    fn a_corrupt_entry_is_an_error_not_a_panic() {
        let key = 5u64.to_be_bytes();
        assert!(decode(&key, &[]).is_err());
        assert!(decode(&key, &[9, 1, 2]).is_err());
        assert!(decode(&key, &[JOURNAL_FORMAT_V1, 0xff, 0xff]).is_err());
        assert!(decode(&[1, 2], &[JOURNAL_FORMAT_V1]).is_err());
    }
}
