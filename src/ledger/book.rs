//! The channel ledger: every channel in memory, sharded, with per-channel serialisation.
//!
//! A paid request is two-phase: [`Ledger::reserve`] (the voucher is checked and the channel is
//! held; `reservation.rs`) → handler → [`Reservation::commit`] with the actual charge, which
//! *stages* the new record (still held) → the caller persists it → [`StagedCommit::apply`].
//! Memory never runs
//! ahead of the store; a failed handler or a failed write releases the channel unchanged and
//! the same voucher may be retried. A second request on a held channel gets `channel_busy`
//! at once: no waiting, so nothing can wait forever (the client is meant to retry; it cannot
//! sign its next voucher before it has our previous response anyway).
//!
//! Signature recovery happens outside every lock. On-chain mirror updates apply immediately,
//! even to a held channel, so a withdrawal seen on chain stops new reservations at once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::MutexGuard;

use crate::ledger::channel::{
    ChannelRecord, ChannelSnapshot, Claimable, LastVoucher, OnchainState,
};
use crate::ledger::reject::Reject;
use crate::ledger::shards::{Shard, Shards, Slot};
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::verify::{SignatureFault, VerifiedVoucher, VoucherSigner};

#[cfg(doc)]
use crate::ledger::{Reservation, StagedCommit};

/// Default number of shards: plenty for 2–64 cores; each is one `parking_lot` mutex.
pub const DEFAULT_SHARDS: usize = 64;

/// The in-memory channel book. Cheap to clone (an `Arc`); share one per escrow deployment.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

struct Inner {
    domain: EscrowDomain,
    shards: Shards,
    next_token: AtomicU64,
    /// Channels whose mirrored chain state changed, while tracking is on (the settler of a
    /// shared store publishes them to the other instances).
    changed: parking_lot::Mutex<Option<std::collections::HashSet<ChannelId>>>,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("domain", &self.inner.domain)
            .field("channels", &self.len())
            .finish()
    }
}

impl Ledger {
    /// An empty ledger for channels of `domain`'s escrow.
    pub fn new(domain: EscrowDomain) -> Self {
        Self::with_shards(domain, DEFAULT_SHARDS)
    }

    /// An empty ledger with `shards` shards (rounded up to a power of two).
    pub fn with_shards(domain: EscrowDomain, shards: usize) -> Self {
        let inner = Inner {
            domain,
            shards: Shards::new(shards),
            next_token: AtomicU64::new(1),
            changed: parking_lot::Mutex::new(None),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The escrow domain vouchers are verified under.
    pub fn domain(&self) -> &EscrowDomain {
        &self.inner.domain
    }

    /// Loads persisted records (on start, before serving). Overwrites channels with the same
    /// id; a channel currently held keeps its hold.
    pub fn restore(&self, records: impl IntoIterator<Item = ChannelRecord>) -> usize {
        let records = records.into_iter();
        // Size every shard once for what is coming, instead of rehashing it as it doubles.
        let per_shard = records.size_hint().0.div_ceil(self.inner.shards.len());
        if per_shard > 0 {
            for shard in self.inner.shards.iter() {
                shard.lock().reserve(per_shard + per_shard / 16);
            }
        }
        let mut n = 0;
        for record in records {
            let mut shard = self.lock(&record.channel_id);
            match shard.get_mut(&record.channel_id) {
                Some(slot) => slot.record = record,
                None => {
                    shard.insert(record.channel_id, Box::new(Slot { record, hold: None }));
                }
            }
            n += 1;
        }
        n
    }

    /// Takes in records another instance wrote to a shared store (a cache refresh): a record
    /// replaces the cached one only if its version is higher (or the channel is new) and no
    /// request here holds it (then only its newer chain state comes in). The mirrored chain
    /// state stays the cached one when that was read later, and claimed totals never move
    /// down. Returns how many records were taken.
    pub fn merge(&self, records: impl IntoIterator<Item = ChannelRecord>) -> usize {
        let mut n = 0;
        for mut record in records {
            let mut shard = self.lock(&record.channel_id);
            match shard.get_mut(&record.channel_id) {
                Some(slot) if slot.record.version >= record.version => {}
                Some(slot) if slot.hold.is_some() => {
                    // A request here holds it: its commit meets the newer version in the
                    // store and rebases or refuses there. Only newer chain state comes in.
                    if record.onchain_synced_at > slot.record.onchain_synced_at {
                        let claimed = slot.record.onchain.total_claimed;
                        slot.record.onchain = record.onchain;
                        slot.record.onchain.total_claimed =
                            slot.record.onchain.total_claimed.max(claimed);
                        slot.record.onchain_synced_at = record.onchain_synced_at;
                    }
                }
                Some(slot) => {
                    let cached = &slot.record;
                    if cached.onchain_synced_at > record.onchain_synced_at {
                        record.onchain = cached.onchain;
                        record.onchain_synced_at = cached.onchain_synced_at;
                    }
                    record.onchain.total_claimed = record
                        .onchain
                        .total_claimed
                        .max(cached.onchain.total_claimed);
                    slot.record = record;
                    if slot.hold.is_none() {
                        slot.record.rebase_if_claimed_beyond();
                    }
                    n += 1;
                }
                None => {
                    shard.insert(record.channel_id, Box::new(Slot { record, hold: None }));
                    n += 1;
                }
            }
        }
        n
    }

    /// Forgets a channel another instance removed (refunded), unless it is held here.
    pub fn forget(&self, id: &ChannelId) {
        let mut shard = self.lock(id);
        if shard.get(id).is_some_and(|slot| slot.hold.is_none()) {
            shard.remove(id);
        }
    }

    /// Inserts a channel seen on chain, or refreshes its mirror if known. Returns its id and
    /// snapshot. A non-zero `withdraw_requested_at` stops new reservations immediately.
    pub fn upsert_from_chain(
        &self,
        config: ChannelConfig,
        onchain: OnchainState,
        now: u64,
    ) -> (ChannelId, ChannelSnapshot) {
        let id = self.inner.domain.channel_id(&config);
        let mut shard = self.lock(&id);
        let slot = shard.entry(id).or_insert_with(|| {
            Box::new(Slot {
                record: ChannelRecord::from_chain(id, config, onchain, now),
                hold: None,
            })
        });
        let before = slot.record.onchain;
        slot.record.mirror(onchain, now);
        if slot.hold.is_none() {
            slot.record.rebase_if_claimed_beyond();
        }
        let out = (id, slot.record.snapshot());
        let moved = slot.record.onchain != before;
        drop(shard);
        if moved && let Some(changed) = self.inner.changed.lock().as_mut() {
            changed.insert(id);
        }
        out
    }

    /// Refreshes the mirror of a known channel (e.g. from a facilitator's `channelState`
    /// after a partial refund or a deposit top-up).
    pub fn refresh(
        &self,
        id: &ChannelId,
        onchain: OnchainState,
        now: u64,
    ) -> Result<ChannelSnapshot, Reject> {
        self.update_mirror(id, |record| record.mirror(onchain, now))
    }

    /// Like [`Self::refresh`], for a read that may be older than what the ledger knows
    /// (the watcher's reads at a confirmed block): `totalClaimed` and `refundNonce` never
    /// move down (`ChannelRecord::mirror_monotonic`).
    pub fn observe(
        &self,
        id: &ChannelId,
        onchain: OnchainState,
        now: u64,
    ) -> Result<ChannelSnapshot, Reject> {
        self.update_mirror(id, |record| record.mirror_monotonic(onchain, now))
    }

    /// Changes a known channel's on-chain mirror with `update`, even while it is held; the
    /// rebase of `charged` (if chain claimed beyond it) waits for the hold to go.
    fn update_mirror(
        &self,
        id: &ChannelId,
        update: impl FnOnce(&mut ChannelRecord),
    ) -> Result<ChannelSnapshot, Reject> {
        let (snapshot, moved) = self.with_slot(id, |slot| {
            let before = slot.record.onchain;
            update(&mut slot.record);
            if slot.hold.is_none() {
                slot.record.rebase_if_claimed_beyond();
            }
            Ok((slot.record.snapshot(), slot.record.onchain != before))
        })?;
        if moved && let Some(changed) = self.inner.changed.lock().as_mut() {
            changed.insert(*id);
        }
        Ok(snapshot)
    }

    /// Starts (`true`) or stops noting which channels' mirrored chain state changes.
    pub fn track_mirror_changes(&self, on: bool) {
        let mut changed = self.inner.changed.lock();
        match (on, changed.is_some()) {
            (true, false) => *changed = Some(Default::default()),
            (false, true) => *changed = None,
            _ => {}
        }
    }

    /// The channels whose mirror changed since the last call (empty when not tracking).
    pub fn take_mirror_changes(&self) -> Vec<ChannelId> {
        self.inner
            .changed
            .lock()
            .as_mut()
            .map(|c| c.drain().collect())
            .unwrap_or_default()
    }

    /// Notes `id` as changed again (its publication must be retried).
    pub fn note_mirror_change(&self, id: ChannelId) {
        if let Some(changed) = self.inner.changed.lock().as_mut() {
            changed.insert(id);
        }
    }

    /// Records a cooperative refund executed at the channel's current `charged` (see
    /// [`crate::ledger::RefundMarks`]), in memory at once, so a replay is refused even if
    /// the write below fails. Returns the record to persist (version bumped) and the
    /// version the store must hold; call `Ledger::persisted` once it is durable.
    pub fn note_refund(
        &self,
        id: &ChannelId,
        now: u64,
        window: u64,
    ) -> Result<(ChannelRecord, Option<u64>), Reject> {
        self.with_slot(id, |slot| {
            let record = &mut slot.record;
            let charged = record.charged;
            record.refunds.record(charged, now, window);
            let mut staged = record.clone();
            staged.version = record.version.saturating_add(1);
            let expected = (record.version != 0).then_some(record.version);
            Ok((staged, expected))
        })
    }

    /// The record of `id` at version `from` was written durably as version `to`.
    pub(crate) fn persisted(&self, id: &ChannelId, from: u64, to: u64) {
        let _ = self.with_slot(id, |slot| {
            if slot.record.version == from {
                slot.record.version = to;
            }
            Ok(())
        });
    }

    /// Records a confirmed claim: `totalClaimed` only moves up.
    pub fn apply_claim(
        &self,
        id: &ChannelId,
        total_claimed: u128,
        now: u64,
    ) -> Result<ChannelSnapshot, Reject> {
        self.update_mirror(id, |record| {
            record.onchain.total_claimed = record.onchain.total_claimed.max(total_claimed);
            record.onchain_synced_at = now;
        })
    }

    /// Removes a channel (after a full refund). Refused with `channel_busy` while held.
    /// The caller deletes it from the store with the returned record's version.
    pub fn remove(&self, id: &ChannelId) -> Result<ChannelRecord, Reject> {
        let mut shard = self.lock(id);
        match shard.get(id) {
            None => Err(Reject::missing(*id)),
            Some(slot) if slot.hold.is_some() => Err(Reject::busy(*id)),
            Some(_) => shard
                .remove(id)
                .map(|slot| slot.record)
                .ok_or_else(|| Reject::missing(*id)),
        }
    }

    /// True when `id` is held here with exactly `config`. Every record's id was computed
    /// from its config when the channel was first seen (a deposit, the chain) and the store
    /// holds only what this engine wrote, so the decoder may then skip hashing `config`.
    pub(crate) fn holds_config(&self, id: &ChannelId, config: &ChannelConfig) -> bool {
        self.lock(id)
            .get(id)
            .is_some_and(|slot| slot.record.config == *config)
    }

    /// How `id`'s vouchers must be verified, or `channel_busy` if it is held right now
    /// (checked first so a duplicate request does not pay for a recovery).
    pub fn signer(&self, id: &ChannelId) -> Result<VoucherSigner, Reject> {
        self.with_slot(id, |slot| match slot.hold {
            Some(_) => Err(Reject::busy(*id)),
            None => Ok(slot.record.signer()),
        })
    }

    /// The zero-charge refund-voucher check (`maxClaimableAmount == charged`). Does not hold
    /// the channel; the refund flow removes or refreshes it once the refund is on chain.
    pub fn check_refund_voucher(
        &self,
        voucher: &VerifiedVoucher,
    ) -> Result<ChannelSnapshot, Reject> {
        let id = voucher.channel_id();
        self.with_slot(&id, |slot| {
            if voucher.signer() != slot.record.signer() {
                return Err(Reject::signature(Some(id), SignatureFault::WrongSigner));
            }
            slot.record.check_refund_voucher(voucher.max_claimable())?;
            Ok(slot.record.snapshot())
        })
    }

    /// Channels with charged-but-unclaimed value, with what a claim needs. The claim's
    /// `totalClaimed` is `charged`, never the signed ceiling.
    pub fn claimable(&self) -> Vec<Claimable> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock();
            out.extend(
                shard
                    .values()
                    .filter_map(|slot| Claimable::of(&slot.record)),
            );
        }
        out
    }

    /// The `channelState` of one channel.
    pub fn snapshot(&self, id: &ChannelId) -> Option<ChannelSnapshot> {
        self.lock(id).get(id).map(|slot| slot.record.snapshot())
    }

    /// A copy of one channel's full record.
    pub fn record(&self, id: &ChannelId) -> Option<ChannelRecord> {
        self.lock(id).get(id).map(|slot| slot.record.clone())
    }

    /// The latest voucher of one channel (`voucherState`).
    pub fn last_voucher(&self, id: &ChannelId) -> Option<LastVoucher> {
        self.lock(id)
            .get(id)
            .and_then(|slot| slot.record.last_voucher())
    }

    /// Copies of every record (for tooling and tests; locks each shard in turn).
    pub fn records(&self) -> Vec<ChannelRecord> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            out.extend(shard.lock().values().map(|slot| slot.record.clone()));
        }
        out
    }

    /// Calls `f` with every record and whether a request holds it, one shard lock at a time,
    /// copying nothing (the admin API's totals and pages over millions of channels). `f`
    /// runs under the shard's lock: keep it short, and never call the ledger from it.
    pub fn visit(&self, mut f: impl FnMut(&ChannelRecord, bool)) {
        for shard in self.inner.shards.iter() {
            for slot in shard.lock().values() {
                f(&slot.record, slot.hold.is_some());
            }
        }
    }

    /// Whether `id` is currently held by a reservation.
    pub fn is_held(&self, id: &ChannelId) -> bool {
        self.lock(id)
            .get(id)
            .is_some_and(|slot| slot.hold.is_some())
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no channel is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self, id: &ChannelId) -> MutexGuard<'_, Shard> {
        self.inner.shards.shard(id).lock()
    }

    /// A fresh hold token (never 0, never reused in this process).
    pub(super) fn next_token(&self) -> u64 {
        self.inner.next_token.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn with_slot<T>(
        &self,
        id: &ChannelId,
        f: impl FnOnce(&mut Slot) -> Result<T, Reject>,
    ) -> Result<T, Reject> {
        let mut shard = self.lock(id);
        let slot = shard.get_mut(id).ok_or_else(|| Reject::missing(*id))?;
        f(slot)
    }

    /// Runs `f` on the slot if `token` still holds it.
    pub(crate) fn with_held<T>(
        &self,
        id: &ChannelId,
        token: u64,
        f: impl FnOnce(&mut Slot) -> T,
    ) -> Result<T, Reject> {
        self.with_slot(id, |slot| match slot.hold {
            Some(t) if t == token => Ok(f(slot)),
            _ => Err(Reject::missing(*id)),
        })
    }

    /// Drops the hold of `token` (no state change besides deferred rebasing).
    pub(crate) fn release(&self, id: &ChannelId, token: u64) {
        let _ = self.with_held(id, token, |slot| {
            slot.hold = None;
            slot.record.rebase_if_claimed_beyond();
        });
    }
}
