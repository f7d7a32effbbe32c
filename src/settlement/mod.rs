//! Turning durable vouchers into money on chain: batched claims, sweeps and idle refunds,
//! over any backend that keeps channel records ([`crate::store::Store`]) and the claim
//! journal ([`crate::store::JournalStore`], [`crate::store::ClaimJournal`]).
//!
//! | file | holds |
//! |---|---|
//! | `scheduler.rs` | [`Settlement`] / [`SettlementHandle`]: when to claim and sweep |
//! | `refunds.rs` | [`refund_idle`]: cooperative refunds of idle channels |
//! | `watcher.rs` | [`Watcher`]: escrow events → ledger mirror, confirmations, reorgs |
//! | `shared.rs` | over a shared store: the settler's refresh of every charge, publishing chain state |
//!
//! Policy (see `docs/settlement.md`): a channel is claimed when its unclaimed charge reaches
//! [`SettlementConfig::claim_threshold`], when [`SettlementConfig::claim_interval`] has passed
//! since the last claim round, and at once when a withdrawal is pending on it (the ledger
//! already refuses new vouchers on such a channel; [`SettlementHandle::wake`] makes the
//! scheduler look now). Claims never exceed what was charged ([`Claimable::claim_total`]).

#[doc(hidden)]
mod refunds;
mod scheduler;
mod shared;
mod watcher;

pub use refunds::{RefundError, RefundPolicy, Refunded, refund_channel, refund_idle};
pub use scheduler::{
    Gate, Observer, RoundReport, Settlement, SettlementConfig, SettlementEvent, SettlementHandle,
};
pub use shared::{RefreshCursor, publish_mirrors, refresh_from_store};
pub use watcher::{PollReport, WatchError, Watcher, WatcherConfig};

// Old homes, kept for callers: the claim journal lives in the store, the freshness policy
// in the ledger, the clock in `crate::clock`.
pub use crate::clock::unix_now;
pub use crate::ledger::Freshness;
pub use crate::store::{BatchState, ClaimJournal, JOURNAL_FORMAT_V1, JournalEntry};

use crate::chain::escrow::{ChainError, EscrowClient};
use crate::ledger::{ChannelSnapshot, Claimable, Ledger};
use crate::reason::Reason;
use crate::typed_data::ChannelConfig;

/// Why an unknown channel could not be loaded from chain.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The escrow has no balance for this config: no such channel (or fully exited).
    #[error("no channel with a positive balance for this config")]
    NotFound,
    /// Reading chain state failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl LoadError {
    /// `channel_not_found`, or the chain error's code (`rpc_read_failed`).
    pub fn reason(&self) -> Reason {
        match self {
            Self::NotFound => Reason::ChannelNotFound,
            Self::Chain(e) => e.reason(),
        }
    }
}

/// Loads a channel the ledger does not know yet (first request after a deposit made
/// elsewhere, or after state loss): reads its on-chain state and inserts it with the
/// charged baseline at on-chain `totalClaimed`. A known channel just gets its mirror
/// refreshed. Call it from the request path before `verify_and_reserve` on a
/// `channel_not_found` reject.
pub async fn load_channel(
    ledger: &Ledger,
    client: &EscrowClient,
    config: ChannelConfig,
) -> Result<ChannelSnapshot, LoadError> {
    let id = ledger.domain().channel_id(&config);
    let state = client.channel_state(id).await?;
    if state.balance == 0 && ledger.snapshot(&id).is_none() {
        return Err(LoadError::NotFound);
    }
    let (_, snapshot) = ledger.upsert_from_chain(config, state, unix_now());
    tracing::info!(channel = %id, balance = state.balance, total_claimed = state.total_claimed, "channel loaded from chain");
    Ok(snapshot)
}

/// Re-reads every known channel's on-chain state into the ledger (on start, and after an
/// RPC outage). Returns how many channels were refreshed and the first error, if any; a
/// failed read leaves that channel's mirror as it was.
pub async fn sync_all(ledger: &Ledger, client: &EscrowClient) -> (usize, Option<ChainError>) {
    let mut ok = 0;
    let mut first_err = None;
    for record in ledger.records() {
        match client.channel_state(record.channel_id).await {
            Ok(state) => {
                if ledger
                    .refresh(&record.channel_id, state, unix_now())
                    .is_ok()
                {
                    ok += 1;
                }
            }
            Err(e) => {
                tracing::warn!(channel = %record.channel_id, error = %e, "channel state read failed");
                first_err.get_or_insert(e);
            }
        }
    }
    (ok, first_err)
}

/// What a claim of `rows` would add on chain, per the mirrored `totalClaimed`.
pub fn unclaimed_of(rows: &[Claimable]) -> u128 {
    rows.iter()
        .map(|r| r.claim_total.saturating_sub(r.onchain_total_claimed))
        .fold(0u128, u128::saturating_add)
}
