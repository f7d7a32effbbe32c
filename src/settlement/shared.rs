//! Settlement over a store shared by several instances (see `store/postgres`): the settler
//! sees every instance's charges through [`refresh_from_store`] before it claims, and tells
//! the other instances what it saw on chain (claims, withdrawals, top-ups) through
//! [`publish_mirrors`], which writes those channels' records with a compare-and-set like
//! any request does. Their next hold on such a channel meets the new version and reloads it,
//! so a withdrawal seen by the settler is refused by every instance.

use crate::ledger::Ledger;
use crate::store::{Store, StoreError};
use crate::typed_data::ChannelId;

/// Takes every record written since `*cursor` into `ledger` and moves the cursor.
///
/// The cursor trails one call behind: a write whose sequence number was drawn before the
/// last call but committed after it is still read once more. Returns how many records
/// changed the ledger.
pub async fn refresh_from_store<S: Store + ?Sized>(
    store: &S,
    ledger: &Ledger,
    cursor: &mut RefreshCursor,
) -> Result<usize, StoreError> {
    let mut taken = 0;
    let mut from = cursor.trailing;
    loop {
        let changes = store.changes_since(from).await?;
        if changes.records.is_empty() {
            break;
        }
        taken += ledger.merge(changes.records);
        if changes.cursor <= from {
            break;
        }
        from = changes.cursor;
    }
    cursor.trailing = cursor.latest;
    cursor.latest = from;
    Ok(taken)
}

/// Where [`refresh_from_store`] continues.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshCursor {
    latest: u64,
    trailing: u64,
}

/// Writes the records of the channels whose mirrored chain state changed
/// ([`Ledger::take_mirror_changes`]) to the shared store. A channel held by a request here is
/// left for the next call (its own commit carries the mirror anyway); a conflict reloads
/// the stored record (keeping the newer mirror) and tries again. Returns how many were
/// written.
pub async fn publish_mirrors<S: Store + ?Sized>(store: &S, ledger: &Ledger) -> usize {
    let mut written = 0;
    for id in ledger.take_mirror_changes() {
        if ledger.is_held(&id) {
            ledger.note_mirror_change(id);
            continue;
        }
        if publish_one(store, ledger, id).await {
            written += 1;
        }
    }
    written
}

/// Writes `id`'s cached record (its mirror) to the shared store now; see
/// [`publish_mirrors`]. Returns whether it was written.
pub(crate) async fn publish_one<S: Store + ?Sized>(
    store: &S,
    ledger: &Ledger,
    id: ChannelId,
) -> bool {
    for _ in 0..3 {
        let Some(record) = ledger.record(&id) else {
            return false;
        };
        if record.version == 0 {
            // Never stored: other instances read such a channel from chain themselves.
            return false;
        }
        let mut next = record.clone();
        next.version = record.version.saturating_add(1);
        // `_held`: a request another instance is serving keeps its hold (its commit rebases
        // over this chain-only change).
        let result = match store
            .compare_and_set_held(Some(record.version), &next)
            .await
        {
            Ok(ticket) => store.wait_durable(ticket).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                ledger.persisted(&id, record.version, next.version);
                return true;
            }
            Err(StoreError::Conflict { .. }) => match store.load(id).await {
                Ok(Some(stored)) => {
                    ledger.merge([stored]);
                }
                _ => return false,
            },
            Err(e) => {
                tracing::warn!(channel = %id, error = %e, "publishing chain state failed; retrying later");
                ledger.note_mirror_change(id);
                return false;
            }
        }
    }
    ledger.note_mirror_change(id);
    false
}
