//! What the scheduler tells others ([`SettlementEvent`] to an [`Observer`]) and asks them
//! ([`Gate`]: may this instance act on chain now).

use std::sync::Arc;

use alloy_primitives::Address;

use crate::settlement::Refunded;
#[cfg(doc)]
use crate::settlement::Settlement;

/// What the scheduler did on chain, as told to an [`Observer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettlementEvent {
    /// A claim batch was mined.
    Claimed {
        /// Journal batch id.
        batch: u64,
        /// The transaction.
        tx_hash: alloy_primitives::B256,
        /// Its block.
        block: Option<u64>,
        /// Rows in the batch.
        rows: usize,
        /// Added to on-chain `totalClaimed`, per the mirror before the claim.
        amount: u128,
        /// Gas used.
        gas_used: u64,
    },
    /// Claimed funds were swept to the receiver.
    Swept {
        /// The transaction.
        tx_hash: alloy_primitives::B256,
        /// Receiver.
        receiver: Address,
        /// Amount swept.
        amount: u128,
        /// Gas used.
        gas_used: u64,
    },
    /// A channel's remainder was refunded to its payer.
    Refunded(Refunded),
}

/// A callback told of every [`SettlementEvent`]; see [`Settlement::with_observer`]. It runs
/// on the settlement task: keep it short and non-blocking.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn Fn(&SettlementEvent) + Send + Sync>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Whether this instance may act on chain now; see [`Settlement::with_gate`].
#[derive(Clone)]
pub struct Gate(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gate")
    }
}
