//! The chain watcher: follows the escrow's channel events and keeps the ledger's mirror of
//! every known channel fresh.
//!
//! Blocks are processed once they have [`WatcherConfig::confirmations`] confirmations: the
//! escrow's logs in the range name the channels that changed, and each one's state is read
//! back *at the range's last block* (so a deposit is credited only once it is confirmed).
//! The hash of every processed range's last block is kept; before each poll the newest kept
//! hash is compared with the chain's. On a mismatch (a reorg deeper than the confirmation
//! depth) the watcher rewinds to the newest kept block that still matches and re-reads every
//! known channel, so nothing credited by a dropped block survives.
//!
//! Withdrawals are the one thing not worth waiting for: `WithdrawInitiated` is also looked
//! for in the unconfirmed blocks, and a channel that shows a pending withdrawal at the head
//! is mirrored as such at once (the ledger then refuses it) and the claim scheduler is woken.
//! Acting early is safe in that direction: a dropped withdrawal only pauses service until
//! the next confirmed read.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::transports::{RpcError, TransportErrorKind};
use alloy_primitives::B256;
use alloy_sol_types::SolEvent;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chain::bindings::UptoEscrow;
use crate::chain::escrow::{ChainError, EscrowClient};
use crate::clock::unix_now;
use crate::ledger::{Freshness, Ledger};
use crate::settlement::sync_all;
use crate::telemetry;
use crate::typed_data::ChannelId;

/// Watcher settings.
#[derive(Clone, Debug)]
pub struct WatcherConfig {
    /// Blocks on top of a block before its events are applied (0: at once).
    pub confirmations: u64,
    /// Poll interval.
    pub poll: Duration,
    /// Most blocks per `eth_getLogs`.
    pub max_range: u64,
    /// Processed-block hashes kept for reorg detection.
    pub history: usize,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            confirmations: 3,
            poll: Duration::from_secs(2),
            max_range: 2_000,
            history: 64,
        }
    }
}

/// What one poll did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Last block processed (confirmed), if any yet.
    pub processed_to: Option<u64>,
    /// Known channels whose mirror was refreshed.
    pub refreshed: usize,
    /// Withdrawals seen (confirmed or not) on known channels.
    pub withdrawals: usize,
    /// A reorg was detected and the watcher rewound.
    pub reorg: bool,
}

/// Why a poll failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// A block or log query failed.
    #[error("rpc {call} failed")]
    Rpc {
        /// Which call.
        call: &'static str,
        /// Cause.
        #[source]
        source: RpcError<TransportErrorKind>,
    },
    /// A channel state read failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// Follows the escrow for one ledger.
#[derive(Debug)]
pub struct Watcher {
    freshness: Option<Freshness>,
    client: Arc<EscrowClient>,
    ledger: Ledger,
    config: WatcherConfig,
    wake: Option<Arc<Notify>>,
    /// Next block to process.
    next: u64,
    /// `(number, hash)` of processed range ends, oldest first.
    seen: VecDeque<(u64, B256)>,
}

const CHANNEL_EVENTS: [B256; 7] = [
    UptoEscrow::ChannelCreated::SIGNATURE_HASH,
    UptoEscrow::ChannelClosed::SIGNATURE_HASH,
    UptoEscrow::Deposited::SIGNATURE_HASH,
    UptoEscrow::Claimed::SIGNATURE_HASH,
    UptoEscrow::Refunded::SIGNATURE_HASH,
    UptoEscrow::WithdrawInitiated::SIGNATURE_HASH,
    UptoEscrow::WithdrawFinalized::SIGNATURE_HASH,
];

impl Watcher {
    /// A watcher starting at block `from` (e.g. the head at start, after a full
    /// [`sync_all`]); `wake` is the claim scheduler's (see `SettlementHandle::waker`).
    pub fn new(
        client: Arc<EscrowClient>,
        ledger: Ledger,
        config: WatcherConfig,
        wake: Option<Arc<Notify>>,
        from: u64,
    ) -> Self {
        Self {
            client,
            ledger,
            config,
            wake,
            next: from,
            seen: VecDeque::new(),
            freshness: None,
        }
    }

    /// Marks `freshness` after every successful poll.
    pub fn with_freshness(mut self, freshness: Freshness) -> Self {
        self.freshness = Some(freshness);
        self
    }

    /// Next block the watcher will process.
    pub const fn next_block(&self) -> u64 {
        self.next
    }

    /// Processes every newly confirmed block (up to `max_range` of them) and checks the
    /// unconfirmed ones for withdrawals.
    pub async fn poll_once(&mut self) -> Result<PollReport, WatchError> {
        let mut report = PollReport {
            reorg: self.check_reorg().await?,
            ..PollReport::default()
        };
        let provider = self.client.provider();
        let head = provider
            .get_block_number()
            .await
            .map_err(rpc("eth_blockNumber"))?;
        let safe = head.checked_sub(self.config.confirmations);
        if let Some(safe) = safe
            && self.next <= safe
        {
            let to = safe.min(self.next.saturating_add(self.config.max_range.max(1) - 1));
            let ids = self.touched(self.next, to, None).await?;
            let hash = self.block_hash(to).await?;
            for id in &ids {
                let state = self.client.channel_state_at(*id, Some(to)).await?;
                // `to` is behind the head, where our claims land: never let this older read
                // lower `totalClaimed` (that would claim the same charge again).
                if self.ledger.observe(id, state, unix_now()).is_ok() {
                    report.refreshed += 1;
                    if state.withdraw_requested_at != 0 {
                        report.withdrawals += 1;
                    }
                }
            }
            self.seen.push_back((to, hash));
            while self.seen.len() > self.config.history.max(1) {
                self.seen.pop_front();
            }
            self.next = to + 1;
            report.processed_to = Some(to);
        }
        // Unconfirmed withdrawals: act at once (see module docs).
        let from = self.next;
        if from <= head {
            let topic = UptoEscrow::WithdrawInitiated::SIGNATURE_HASH;
            for id in self.touched(from, head, Some(topic)).await? {
                let state = self.client.channel_state(id).await?;
                if state.withdraw_requested_at != 0
                    && self.ledger.observe(&id, state, unix_now()).is_ok()
                {
                    report.withdrawals += 1;
                }
            }
        }
        if report.withdrawals > 0
            && let Some(wake) = &self.wake
        {
            tracing::info!(
                withdrawals = report.withdrawals,
                "withdrawal seen; waking the claim scheduler"
            );
            wake.notify_one();
        }
        if let Some(f) = &self.freshness {
            f.mark(unix_now());
        }
        Ok(report)
    }

    /// Known channels named by escrow logs in `from..=to` (only `topic`, if given).
    async fn touched(
        &self,
        from: u64,
        to: u64,
        topic: Option<B256>,
    ) -> Result<BTreeSet<ChannelId>, WatchError> {
        let filter = Filter::new()
            .address(self.client.escrow())
            .from_block(from)
            .to_block(to);
        let filter = match topic {
            Some(t) => filter.event_signature(t),
            None => filter.event_signature(CHANNEL_EVENTS.to_vec()),
        };
        let logs = self
            .client
            .provider()
            .get_logs(&filter)
            .await
            .map_err(rpc("eth_getLogs"))?;
        Ok(logs
            .iter()
            .filter_map(|log| log.topics().get(1).copied())
            .map(ChannelId)
            .filter(|id| self.ledger.snapshot(id).is_some())
            .collect())
    }

    async fn block_hash(&self, n: u64) -> Result<B256, WatchError> {
        let block = self
            .client
            .provider()
            .get_block_by_number(n.into())
            .await
            .map_err(rpc("eth_getBlockByNumber"))?;
        Ok(block.map(|b| b.header.hash).unwrap_or_default())
    }

    /// Compares the newest kept hash with the chain's; on a mismatch rewinds to the newest
    /// kept block still on the chain and re-reads every known channel.
    async fn check_reorg(&mut self) -> Result<bool, WatchError> {
        let Some(&(n, hash)) = self.seen.back() else {
            return Ok(false);
        };
        if self.block_hash(n).await? == hash {
            return Ok(false);
        }
        self.seen.pop_back();
        while let Some(&(m, kept)) = self.seen.back() {
            if self.block_hash(m).await? == kept {
                break;
            }
            self.seen.pop_back();
        }
        let resume = self.seen.back().map_or_else(
            // Deeper than our history: start over from the oldest block we ever knew.
            || n.saturating_sub(self.config.history as u64),
            |&(m, _)| m + 1,
        );
        tracing::warn!(
            reorged_block = n,
            resume,
            "reorg detected; rewinding and re-reading channel state"
        );
        let (_, err) = sync_all(&self.ledger, &self.client).await;
        if let Some(e) = err {
            return Err(e.into());
        }
        self.next = resume;
        Ok(true)
    }

    /// Runs [`Self::poll_once`] every [`WatcherConfig::poll`] until `stop`.
    pub fn spawn(mut self, stop: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.poll_once().await {
                    metrics::counter!(telemetry::RPC_ERRORS, "call" => "watcher").increment(1);
                    tracing::warn!(error = %e, "watcher poll failed; retrying");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.config.poll) => {}
                }
            }
        })
    }
}

fn rpc(call: &'static str) -> impl Fn(RpcError<TransportErrorKind>) -> WatchError {
    move |source| WatchError::Rpc { call, source }
}
