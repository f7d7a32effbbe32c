//! The claim journal: every claim batch is written (and flushed) **before** it is sent, and
//! removed once its outcome is reflected in the ledger. Whatever is still in the journal on
//! start, or after a send that may or may not have been mined, is reconciled with chain:
//! the journalled channels' `totalClaimed` is read back and applied, and the rows still
//! below their intended total are simply claimable again. Claims are cumulative totals, so
//! re-sending a row is harmless on chain; the journal is what makes sure no batch whose fate
//! is unknown is forgotten, and tells the restart exactly which channels to re-read.
//!
//! [`ClaimJournal`] is the logic (batch ids, state changes); a backend keeps the entries
//! through [`JournalStore`]. [`crate::store::SledStore`] keeps them in its
//! [`crate::store::CLAIM_JOURNAL_TREE`], encoded by `codec.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

use crate::ledger::Claimable;
use crate::store::{SledStore, StoreError};

/// Format byte of a journal entry's encoding.
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

/// Where a backend keeps the claim journal: entries keyed by an increasing batch id.
///
/// The calls are synchronous: they run on the settlement task, off the request path, and
/// a durable write must be done before the batch is sent. A backend with an async client
/// (a database over the network) blocks on it here (e.g. `tokio::task::block_in_place`).
pub trait JournalStore: Send + Sync {
    /// Writes `entry` under its id, replacing any entry there. With `durable`, returns only
    /// once the write survives a crash (the store's flush); without, it may be lost.
    fn put_entry(&self, entry: &JournalEntry, durable: bool) -> Result<(), StoreError>;

    /// The entry of batch `id`.
    fn entry(&self, id: u64) -> Result<Option<JournalEntry>, StoreError>;

    /// Deletes batch `id` (not flushed: a lost removal only means one more reconciliation).
    fn remove_entry(&self, id: u64) -> Result<(), StoreError>;

    /// Every entry, oldest (lowest id) first.
    fn entries(&self) -> Result<Vec<JournalEntry>, StoreError>;

    /// The highest batch id stored (`None`: empty), so ids keep increasing across restarts.
    fn last_entry_id(&self) -> Result<Option<u64>, StoreError>;

    /// Number of stored entries.
    fn entry_count(&self) -> usize;
}

/// The claim journal over a backend's [`JournalStore`].
pub struct ClaimJournal<S: JournalStore = SledStore> {
    store: Arc<S>,
    /// Next batch id: one above the highest open batch at open time, then counting up.
    next_id: AtomicU64,
}

impl<S: JournalStore> std::fmt::Debug for ClaimJournal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimJournal")
            .field("entries", &self.store.entry_count())
            .finish()
    }
}

impl<S: JournalStore> ClaimJournal<S> {
    /// The journal kept in `store`; durable writes are flushed (and `fdatasync`ed if the
    /// store does that) before they return.
    pub fn open(store: &Arc<S>) -> Result<Self, StoreError> {
        let next = store.last_entry_id()?.map_or(1, |id| id.saturating_add(1));
        Ok(Self {
            store: Arc::clone(store),
            next_id: AtomicU64::new(next),
        })
    }

    /// The backend.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Journals a new batch of `rows` as [`BatchState::Pending`], durably. Returns its id.
    pub fn begin(&self, rows: &[Claimable], now: u64) -> Result<u64, StoreError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = JournalEntry {
            id,
            state: BatchState::Pending,
            rows: rows.to_vec(),
            tx_hashes: Vec::new(),
            created_at: now,
        };
        self.store.put_entry(&entry, true)?;
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
        self.store.put_entry(&entry, true)
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
        self.store.put_entry(&entry, false)
    }

    /// Removes a batch whose outcome the ledger now reflects. Not flushed: if the removal is
    /// lost in a crash, the batch is reconciled once more, which changes nothing.
    pub fn finish(&self, id: u64) -> Result<(), StoreError> {
        self.store.remove_entry(id)
    }

    /// One batch.
    pub fn get(&self, id: u64) -> Result<Option<JournalEntry>, StoreError> {
        self.store.entry(id)
    }

    /// Every open batch, oldest first.
    pub fn open_batches(&self) -> Result<Vec<JournalEntry>, StoreError> {
        self.store.entries()
    }

    /// Number of open batches.
    pub fn len(&self) -> usize {
        self.store.entry_count()
    }

    /// True when no batch is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::codec::{decode_entry, encode_entry, test_config};
    use crate::store::{Durability, SledOptions};
    use crate::typed_data::ChannelId;
    use alloy_primitives::Bytes;

    fn row(n: u8) -> Claimable {
        Claimable {
            channel_id: ChannelId(B256::repeat_byte(n)),
            config: test_config(),
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

    /// Entries written before the config was shared (a flat row) read back the same, and
    /// are written byte for byte as before.
    #[test]
    fn a_journal_entry_keeps_its_flat_layout() {
        let row = row(3);
        // The flat row, field by field (bincode writes a tuple like a struct: its fields in
        // order, nothing around them).
        let c = &row.config;
        let flat = (
            (
                row.channel_id.0.0,
                c.payer.0.0,
                c.payerAuthorizer.0.0,
                c.receiver.0.0,
            ),
            (c.receiverAuthorizer.0.0, c.token.0.0, 900_u64, c.salt.0),
            (row.max_claimable, row.signature.to_vec(), row.claim_total),
            (row.onchain_total_claimed, row.withdraw_requested_at),
        );
        let mut old = vec![JOURNAL_FORMAT_V1];
        let old_entry = (BatchState::Sent, vec![flat], vec![[0xaa_u8; 32]], 11_u64);
        bincode::serde::encode_into_std_write(&old_entry, &mut old, bincode::config::standard())
            .expect("flat");
        let entry = JournalEntry {
            id: 5,
            state: BatchState::Sent,
            rows: vec![row],
            tx_hashes: vec![B256::repeat_byte(0xaa)],
            created_at: 11,
        };
        assert_eq!(
            decode_entry(&5u64.to_be_bytes(), &old).ok(),
            Some(entry.clone())
        );
        assert_eq!(encode_entry(&entry).ok(), Some(old));
    }
}
