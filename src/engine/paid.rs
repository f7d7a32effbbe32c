//! [`Paid`]: a checked payment holding its channel between [`super::Engine::authorize`] and
//! [`super::Engine::settle`], and the shared store's hold it gives back when dropped.

use std::sync::Arc;

use alloy_primitives::{Address, B256};

use crate::ledger::Reservation;
use crate::store::Store;
use crate::typed_data::ChannelId;

/// A checked payment holding its channel: run the handler, then [`super::Engine::settle`]. Dropping
/// it releases the channel with nothing charged.
#[derive(Debug)]
pub struct Paid {
    pub(super) reservation: Reservation,
    /// The deposit that came with this request: transaction and amount.
    pub(super) deposit: Option<(B256, u128)>,
    /// The shared store's hold, given back if the request charges nothing.
    pub(super) shared: Option<SharedHold>,
}

/// Lets a dropped [`Paid`] give a shared store's hold back (the store is generic; this is not).
trait ReleaseHold: Send + Sync {
    fn release_hold(&self, id: ChannelId);
}

impl<S: Store> ReleaseHold for S {
    fn release_hold(&self, id: ChannelId) {
        self.release(id);
    }
}

/// A hold in a shared store, released on drop unless a write released it already.
pub(super) struct SharedHold {
    store: Option<Arc<dyn ReleaseHold>>,
    id: ChannelId,
}

impl SharedHold {
    pub(super) fn new<S: Store + 'static>(store: &Arc<S>, id: ChannelId) -> Self {
        let store: Arc<dyn ReleaseHold> = Arc::clone(store) as Arc<dyn ReleaseHold>;
        Self {
            store: Some(store),
            id,
        }
    }

    /// The write that ended the request released the hold in the database.
    pub(super) fn disarm(mut self) {
        self.store = None;
    }
}

impl Drop for SharedHold {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            store.release_hold(self.id);
        }
    }
}

impl std::fmt::Debug for SharedHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedHold").field("id", &self.id).finish()
    }
}

impl Paid {
    /// The per-request maximum this payment covers.
    pub fn price(&self) -> u128 {
        self.reservation.price()
    }
    /// The held channel.
    pub fn channel_id(&self) -> ChannelId {
        self.reservation.channel_id()
    }
    /// Who pays.
    pub fn payer(&self) -> Address {
        self.reservation.payer()
    }
    /// Whether a deposit came with this payment (it is on chain already).
    pub fn with_deposit(&self) -> bool {
        self.deposit.is_some()
    }

    /// The metrics label of the payment: `deposit` or `voucher`.
    pub fn kind(&self) -> &'static str {
        if self.with_deposit() {
            "deposit"
        } else {
            "voucher"
        }
    }
}
