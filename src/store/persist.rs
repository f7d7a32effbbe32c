//! The glue between a staged ledger commit and the store: write, wait, then apply.

use crate::ledger::{Receipt, Reject, StagedCommit};
use crate::store::{Store, StoreError};

/// Persisting a commit failed; the channel was released unchanged in memory.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The store refused or failed; do not acknowledge the request.
    #[error("persisting the voucher failed")]
    Store(#[from] StoreError),
    /// The ledger lost the hold (cannot happen through the ledger's API).
    #[error("applying the durable commit failed: {0}")]
    Ledger(Reject),
}

/// Writes the staged record with a compare-and-set, waits until it is durable, then applies
/// it to the ledger. Returns the receipt for `PAYMENT-RESPONSE`. On error the staged commit
/// is dropped, which releases the channel with its state unchanged.
///
/// After a [`StoreError::Conflict`] the channel's stored record is not the one the ledger
/// holds (another writer, or an earlier write whose durability wait failed): reload it with
/// [`Store::load`] and [`crate::ledger::Ledger::restore`] before serving it again.
pub async fn persist<S: Store + ?Sized>(
    store: &S,
    staged: StagedCommit,
) -> Result<Receipt, PersistError> {
    let ticket = store
        .compare_and_set(staged.expected_version(), staged.record())
        .await?;
    store.wait_durable(ticket).await?;
    staged.apply().map_err(PersistError::Ledger)
}
