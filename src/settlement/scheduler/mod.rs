//! The claim and sweep scheduler (`task.rs`: the task loop and its handle; `hooks.rs`: events
//! told to an observer, the gate asked before acting).
//!
//! One task owns all claiming, so batches never race each other for the same channel. Each
//! round: reconcile whatever the journal still holds, pick the due channels, claim them in
//! batches of at most [`SettlementConfig::batch_size`] (journal first, then send), apply the
//! mined totals to the ledger. A batch whose simulation fails is split in halves until the
//! failing channel is isolated; that channel then waits [`SettlementConfig::retry_backoff`]
//! while the others are claimed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use alloy_primitives::Address;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::chain::escrow::{ChainError, EscrowClient};
use crate::chain::tx::TxError;
use crate::clock::unix_now;
use crate::ledger::{Claimable, Ledger};
use crate::settlement::{RefundError, RefundPolicy, Refunded, refund_channel, unclaimed_of};
use crate::store::{BatchState, ClaimJournal, JournalEntry, SettlementStore, SledStore};
use crate::telemetry;
use crate::typed_data::ChannelId;

mod hooks;
mod task;

pub use hooks::{Gate, Observer, SettlementEvent};
pub use task::SettlementHandle;

/// When to claim and sweep.
#[derive(Clone, Debug)]
pub struct SettlementConfig {
    /// Claim a channel as soon as its unclaimed charge reaches this (atomic units).
    pub claim_threshold: u128,
    /// Claim every channel with any unclaimed charge at least this often.
    pub claim_interval: Duration,
    /// Channels per `claimWithSignature` (the contract's gas per row is in `docs/gas.md`).
    pub batch_size: usize,
    /// Sweep claimed funds to the receivers this often.
    pub settle_interval: Duration,
    /// How often the scheduler looks at thresholds when nobody wakes it.
    pub tick: Duration,
    /// A channel whose claim fails simulation on its own is retried after this long.
    pub retry_backoff: Duration,
    /// A mined claim batch stays in the journal until its block has this many
    /// confirmations, then is read back once more (a reorg may have dropped it). 0: closed
    /// as soon as it is mined.
    pub confirmations: u64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        Self {
            claim_threshold: 1_000_000, // 1 USDC
            claim_interval: Duration::from_secs(3_600),
            batch_size: 100,
            settle_interval: Duration::from_secs(3_600),
            tick: Duration::from_secs(5),
            retry_backoff: Duration::from_secs(60),
            confirmations: 3,
        }
    }
}

/// What one claim round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Journal batches reconciled with chain before the round.
    pub reconciled: usize,
    /// Claim transactions mined.
    pub batches: usize,
    /// Rows in those transactions.
    pub rows: usize,
    /// Sum added to on-chain `totalClaimed` per the ledger's mirror before the round.
    pub claimed: u128,
    /// Gas used by those transactions.
    pub gas_used: u64,
    /// Rows not claimed this round (failed alone, or their batch's fate is unknown).
    pub failed_rows: usize,
    /// Rows dropped before sending because chain already had them claimed (the mirror was
    /// behind); no gas was spent on them.
    pub already_claimed: usize,
}

/// The scheduler's state; shared by the task and the handle.
#[derive(Debug)]
pub struct Settlement<S: SettlementStore = SledStore> {
    ledger: Ledger,
    client: Arc<EscrowClient>,
    journal: ClaimJournal<S>,
    config: SettlementConfig,
    wake: Arc<Notify>,
    timers: Mutex<Timers>,
    refunds: Option<Refunds<S>>,
    /// Whether this instance may act on chain now (the settler lease of a shared store);
    /// `None`: always.
    gate: Option<Gate>,
    /// Where the refresh from a shared store continues.
    cursor: tokio::sync::Mutex<super::RefreshCursor>,
    /// Held by every on-chain act (the task's round, or one an operator forces through
    /// [`Self::claim_now`], [`Self::sweep_now`], [`Self::refund_now`]): one at a time, so a
    /// forced claim never races the task's batches for the same channel.
    acting: tokio::sync::Mutex<()>,
    /// Told of every transaction mined (claims, sweeps, refunds).
    observer: Option<Observer>,
}

/// Idle-channel refunds run by the scheduler task (so never concurrently with a claim).
#[derive(Debug)]
struct Refunds<S> {
    store: Arc<S>,
    policy: RefundPolicy,
    every: Duration,
}

#[derive(Debug)]
struct Timers {
    last_claim_round: Instant,
    last_settle: Instant,
    last_refund: Instant,
    backoff: HashMap<ChannelId, Instant>,
}

impl<S: SettlementStore> Settlement<S> {
    /// A scheduler for `ledger`'s channels that name `client`'s key as receiver authorizer.
    pub fn new(
        ledger: Ledger,
        client: Arc<EscrowClient>,
        journal: ClaimJournal<S>,
        config: SettlementConfig,
    ) -> Self {
        let now = Instant::now();
        Self {
            ledger,
            client,
            journal,
            config,
            wake: Arc::new(Notify::new()),
            refunds: None,
            gate: None,
            cursor: tokio::sync::Mutex::new(Default::default()),
            acting: tokio::sync::Mutex::new(()),
            observer: None,
            timers: Mutex::new(Timers {
                last_claim_round: now,
                last_settle: now,
                last_refund: now,
                backoff: HashMap::new(),
            }),
        }
    }

    /// Also refunds idle channels per `policy` every `every` (see [`refund_idle`](crate::settlement::refund_idle)); the
    /// store is where refunded-out channels are deleted.
    pub fn with_refunds(mut self, store: Arc<S>, policy: RefundPolicy, every: Duration) -> Self {
        self.refunds = Some(Refunds {
            store,
            policy,
            every,
        });
        self
    }

    /// Acts on chain (claims, sweeps, refunds) only while `gate` says so: the settler
    /// lease of a shared store ([`crate::store::SettlerLease::is_safe`]).
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Tells `observer` of every transaction mined (the admin API's history).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, event: SettlementEvent) {
        if let Some(o) = &self.observer {
            (o.0)(&event);
        }
    }

    /// Whether this instance may act on chain now (always, unless a settler lease gates it).
    pub fn may_act_now(&self) -> bool {
        self.may_act()
    }

    /// Whether an on-chain act (the task's round, or a forced claim, sweep or refund) is
    /// running now: a transaction it sent may be mined before the ledger's mirror shows it.
    pub fn is_acting(&self) -> bool {
        self.acting.try_lock().is_err()
    }

    /// A claim round of every channel with an unclaimed charge, now (an operator's "claim
    /// now"), after the round the task may be running.
    pub async fn claim_now(&self) -> RoundReport {
        let _acting = self.acting.lock().await;
        self.claim_round(true).await
    }

    /// A sweep now (an operator's "sweep now"), between the task's rounds.
    pub async fn sweep_now(&self) -> Result<u128, ChainError> {
        let _acting = self.acting.lock().await;
        if !self.may_act() {
            return Ok(0);
        }
        self.settle_round().await
    }

    /// Refunds channel `id`'s remainder to its payer now, idle or not, claiming its unclaimed
    /// charge in the same transaction (an operator's "refund"); see [`refund_channel`].
    pub async fn refund_now(&self, id: ChannelId) -> Result<Refunded, RefundError> {
        let _acting = self.acting.lock().await;
        if !self.may_act() {
            return Err(RefundError::NotNow(
                "this instance may not act on chain now",
            ));
        }
        let out = refund_channel(&self.ledger, &**self.journal.store(), &self.client, id).await;
        if let Ok(done) = &out {
            self.observe(SettlementEvent::Refunded(done.clone()));
        }
        out
    }

    fn may_act(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| (g.0)())
    }

    /// The journal (tests and tooling inspect it).
    pub fn journal(&self) -> &ClaimJournal<S> {
        &self.journal
    }

    /// The config.
    pub fn config(&self) -> &SettlementConfig {
        &self.config
    }

    /// Reconciles every open journal batch with chain: reads each journalled channel's
    /// state, applies it to the ledger, and closes the batch once every read succeeded.
    /// Rows still below their intended total stay claimable in the ledger and go out with
    /// the next round. Returns the number of batches closed.
    pub async fn reconcile(&self) -> Result<usize, ChainError> {
        let open = match self.journal.open_batches() {
            Ok(open) => open,
            Err(e) => {
                tracing::error!(error = %e, "claim journal unreadable");
                return Ok(0);
            }
        };
        let mut closed = 0;
        let head = if open.iter().any(|e| matches!(e.state, BatchState::Mined(_))) {
            Some(
                self.client
                    .provider()
                    .get_block_number()
                    .await
                    .map_err(|source| ChainError::Read {
                        call: "eth_blockNumber",
                        source,
                    })?,
            )
        } else {
            None
        };
        for entry in open {
            if let (BatchState::Mined(block), Some(head)) = (entry.state, head)
                && head < block.saturating_add(self.config.confirmations)
            {
                continue;
            }
            self.reconcile_entry(&entry).await?;
            if let Err(e) = self.journal.finish(entry.id) {
                tracing::error!(batch = entry.id, error = %e, "closing journal batch failed");
            }
            closed += 1;
        }
        Ok(closed)
    }

    async fn reconcile_entry(&self, entry: &JournalEntry) -> Result<(), ChainError> {
        let mut below = 0;
        for row in &entry.rows {
            let state = self.client.channel_state(row.channel_id).await?;
            let now = unix_now();
            if self.ledger.refresh(&row.channel_id, state, now).is_err() {
                self.ledger
                    .upsert_from_chain(row.config.clone(), state, now);
            }
            if state.total_claimed < row.claim_total {
                below += 1;
            }
        }
        tracing::info!(batch = entry.id, state = ?entry.state, rows = entry.rows.len(), below, txs = ?entry.tx_hashes, "journal batch reconciled with chain");
        Ok(())
    }

    /// The channels due for a claim now, most urgent first.
    fn due(&self, all: bool) -> Vec<Claimable> {
        let ours = self.client.receiver_authorizer();
        let now = Instant::now();
        let timers = self.timers.lock();
        let mut rows: Vec<Claimable> = self
            .ledger
            .claimable()
            .into_iter()
            .filter(|r| Some(r.config.receiverAuthorizer) == ours)
            .filter(|r| timers.backoff.get(&r.channel_id).is_none_or(|t| *t <= now))
            .filter(|r| {
                all || r.withdraw_requested_at != 0
                    || r.claim_total.saturating_sub(r.onchain_total_claimed)
                        >= self.config.claim_threshold
            })
            .collect();
        rows.sort_by_key(|r| {
            (
                r.withdraw_requested_at == 0,
                std::cmp::Reverse(r.claim_total.saturating_sub(r.onchain_total_claimed)),
            )
        });
        rows
    }

    /// One round: reconcile the journal, then claim what is due (`all`: everything with an
    /// unclaimed charge, as when the claim interval has passed).
    pub async fn claim_round(&self, all: bool) -> RoundReport {
        let mut report = RoundReport::default();
        if !self.may_act() {
            return report;
        }
        let store = self.journal.store();
        if store.is_shared() {
            // Every instance's charges, not only this one's, before deciding what is due.
            let mut cursor = self.cursor.lock().await;
            if let Err(e) = super::refresh_from_store(&**store, &self.ledger, &mut cursor).await {
                tracing::warn!(error = %e, "reading charges from the shared store failed; claims deferred");
                return report;
            }
        }
        match self.reconcile().await {
            Ok(n) => report.reconciled = n,
            Err(e) => {
                // Chain unreachable: claiming would fail too; the journal waits for the next round.
                tracing::warn!(error = %e, "journal reconciliation deferred");
                return report;
            }
        }
        let all = all || {
            let t = self.timers.lock();
            t.last_claim_round.elapsed() >= self.config.claim_interval
        };
        let rows = self.due(all);
        if all {
            self.timers.lock().last_claim_round = Instant::now();
        }
        for chunk in rows.chunks(self.config.batch_size.max(1)) {
            match self.still_unclaimed(chunk, &mut report).await {
                Ok(rows) => self.claim_batch(rows, &mut report).await,
                Err(e) => {
                    // Without the latest totals we do not send: the rows may be claimed already.
                    report.failed_rows += chunk.len();
                    tracing::warn!(rows = chunk.len(), error = %e, "reading totalClaimed before a claim failed; claims deferred");
                    if e.unreachable() {
                        break;
                    }
                }
            }
        }
        let unclaimed = unclaimed_of(&self.ledger.claimable());
        metrics::gauge!(telemetry::UNCLAIMED).set(unclaimed as f64);
        report
    }

    /// The rows whose latest on-chain `totalClaimed` is still below their claim, read in one
    /// `eth_call` right before sending. A claim row at or below the chain's total is a no-op
    /// that still costs gas (the relayer paid 39,506 gas for one after a stale mirror); such
    /// rows are dropped and the ledger catches up (`apply_claim` only moves up).
    async fn still_unclaimed(
        &self,
        rows: &[Claimable],
        report: &mut RoundReport,
    ) -> Result<Vec<Claimable>, ChainError> {
        let ids: Vec<ChannelId> = rows.iter().map(|r| r.channel_id).collect();
        let totals = self.client.totals_claimed(&ids).await?;
        let now = unix_now();
        let mut keep = Vec::with_capacity(rows.len());
        for (row, total) in rows.iter().zip(totals) {
            if total >= row.claim_total {
                let _ = self.ledger.apply_claim(&row.channel_id, total, now);
                report.already_claimed += 1;
                tracing::info!(channel = %row.channel_id, claim_total = row.claim_total, on_chain = total, "already claimed on chain; not sent");
            } else {
                keep.push(row.clone());
            }
        }
        Ok(keep)
    }

    /// Journals, sends and applies one batch; on a simulation failure splits it.
    async fn claim_batch(&self, rows: Vec<Claimable>, report: &mut RoundReport) {
        let mut stack = vec![rows];
        while let Some(rows) = stack.pop() {
            if rows.is_empty() {
                continue;
            }
            let id = match self.journal.begin(&rows, unix_now()) {
                Ok(id) => id,
                Err(e) => {
                    // Without a durable journal entry we do not send.
                    tracing::error!(error = %e, "journal write failed; claim not sent");
                    report.failed_rows += rows.len();
                    continue;
                }
            };
            tracing::info!(
                batch = id,
                rows = rows.len(),
                "claim batch journalled; sending"
            );
            match self.client.claim(&rows).await {
                Ok(out) => {
                    let now = unix_now();
                    for row in &rows {
                        let _ = self
                            .ledger
                            .apply_claim(&row.channel_id, row.claim_total, now);
                        let waited = now.saturating_sub(row_time(&self.ledger, row));
                        metrics::histogram!(telemetry::SETTLEMENT_LATENCY).record(waited as f64);
                    }
                    let closed = match out.block {
                        Some(block) if self.config.confirmations > 0 => {
                            self.journal.mark_mined(id, block, out.tx_hash)
                        }
                        _ => self.journal.finish(id),
                    };
                    if let Err(e) = closed {
                        tracing::error!(batch = id, error = %e, "journal update failed");
                    }
                    metrics::counter!(telemetry::CLAIM_BATCHES).increment(1);
                    metrics::histogram!(telemetry::CLAIM_GAS).record(out.gas_used as f64);
                    metrics::histogram!(telemetry::CLAIM_ROWS).record(rows.len() as f64);
                    report.batches += 1;
                    report.rows += rows.len();
                    report.claimed += unclaimed_of(&rows);
                    report.gas_used += out.gas_used;
                    self.observe(SettlementEvent::Claimed {
                        batch: id,
                        tx_hash: out.tx_hash,
                        block: out.block,
                        rows: rows.len(),
                        amount: unclaimed_of(&rows),
                        gas_used: out.gas_used,
                    });
                }
                Err(e) if e.nothing_sent() && e.unreachable() => {
                    // The node is unreachable, not the batch at fault: no split, no backoff;
                    // the rest of the round would fail the same way.
                    let _ = self.journal.finish(id);
                    let left: usize = stack.iter().map(Vec::len).sum();
                    report.failed_rows += rows.len() + left;
                    metrics::counter!(telemetry::RPC_ERRORS, "call" => "claim").increment(1);
                    tracing::warn!(rows = rows.len() + left, error = %e, "rpc unreachable; claims deferred");
                    return;
                }
                Err(e) if e.nothing_sent() => {
                    let _ = self.journal.finish(id);
                    if rows.len() > 1 {
                        tracing::warn!(rows = rows.len(), error = %e, reason = %e.reason(), "claim batch failed simulation; splitting");
                        let mut left = rows;
                        let right = left.split_off(left.len() / 2);
                        stack.push(right);
                        stack.push(left);
                    } else {
                        for row in &rows {
                            tracing::error!(channel = %row.channel_id, claim_total = row.claim_total, error = %e, reason = %e.reason(), "claim failed simulation; backing off");
                            self.timers
                                .lock()
                                .backoff
                                .insert(row.channel_id, Instant::now() + self.config.retry_backoff);
                        }
                        report.failed_rows += rows.len();
                    }
                }
                Err(e) => {
                    // May or may not be mined: keep the batch journalled as sent; the next
                    // round reads chain state back before anything is re-sent.
                    let hashes = match &e {
                        ChainError::Tx { source, .. } => match source.as_ref() {
                            TxError::Timeout { hashes, .. } => hashes.clone(),
                            TxError::Reverted { hash, .. } => vec![*hash],
                            _ => Vec::new(),
                        },
                        _ => Vec::new(),
                    };
                    if let Err(je) = self.journal.mark_sent(id, &hashes) {
                        tracing::error!(batch = id, error = %je, "journal update failed");
                    }
                    tracing::warn!(batch = id, rows = rows.len(), error = %e, reason = %e.reason(), "claim batch outcome unknown; will reconcile");
                    report.failed_rows += rows.len();
                    if e.unreachable() {
                        report.failed_rows += stack.iter().map(Vec::len).sum::<usize>();
                        return;
                    }
                }
            }
        }
    }

    /// Sweeps every (receiver, token) pair of our channels. Returns the amount swept.
    pub async fn settle_round(&self) -> Result<u128, ChainError> {
        let ours = self.client.receiver_authorizer();
        let pairs: BTreeSet<(Address, Address)> = self
            .ledger
            .records()
            .into_iter()
            .filter(|r| Some(r.config.receiverAuthorizer) == ours)
            .map(|r| (r.config.receiver, r.config.token))
            .collect();
        let mut total = 0u128;
        for (receiver, token) in pairs {
            let out = self.client.settle(receiver, token).await?;
            if let Some(tx_hash) = out.tx_hash {
                metrics::counter!(telemetry::SETTLES).increment(1);
                metrics::counter!(telemetry::SETTLED)
                    .increment(u64::try_from(out.amount).unwrap_or(u64::MAX));
                self.observe(SettlementEvent::Swept {
                    tx_hash,
                    receiver,
                    amount: out.amount,
                    gas_used: out.gas_used,
                });
            }
            total = total.saturating_add(out.amount);
        }
        self.timers.lock().last_settle = Instant::now();
        Ok(total)
    }

    /// Wakes the scheduler for a round now (a withdrawal was seen, or at shutdown).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// When the row's latest charge was made (for the latency metric).
fn row_time(ledger: &Ledger, row: &Claimable) -> u64 {
    ledger
        .record(&row.channel_id)
        .map(|r| r.last_request_at)
        .unwrap_or(0)
}
