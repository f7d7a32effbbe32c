//! Payers the operator refuses ([`BlockedPayers`]): their vouchers and deposits get
//! `payer_blocked` right after the stateless decode, before any chain read, reservation or
//! write, so a refusal changes nothing. Refunds are still served: the money is the payer's.
//!
//! The set lives in memory; keeping it across restarts is the caller's business (`serve`
//! writes it to a file next to its sled store, or to the PostgreSQL store's
//! `x402_blocked_payers` table, before it changes the set).

use std::collections::BTreeSet;
use std::sync::Arc;

use alloy_primitives::Address;
use parking_lot::RwLock;

/// A shared set of blocked payer addresses. Cheap to clone; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct BlockedPayers {
    set: Arc<RwLock<BTreeSet<Address>>>,
}

impl BlockedPayers {
    /// A set holding `payers`.
    pub fn new(payers: impl IntoIterator<Item = Address>) -> Self {
        Self {
            set: Arc::new(RwLock::new(payers.into_iter().collect())),
        }
    }

    /// Whether `payer` is blocked.
    pub fn contains(&self, payer: &Address) -> bool {
        self.set.read().contains(payer)
    }

    /// Blocks `payer`; returns whether it was not blocked before.
    pub fn insert(&self, payer: Address) -> bool {
        self.set.write().insert(payer)
    }

    /// Unblocks `payer`; returns whether it was blocked.
    pub fn remove(&self, payer: &Address) -> bool {
        self.set.write().remove(payer)
    }

    /// Replaces the whole set (e.g. with what a shared store holds now).
    pub fn replace(&self, payers: impl IntoIterator<Item = Address>) {
        *self.set.write() = payers.into_iter().collect();
    }

    /// Every blocked payer, sorted.
    pub fn list(&self) -> Vec<Address> {
        self.set.read().iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_set() {
        let a = BlockedPayers::default();
        let b = a.clone();
        let payer = Address::repeat_byte(7);
        assert!(a.insert(payer));
        assert!(!a.insert(payer));
        assert!(b.contains(&payer));
        assert_eq!(b.list(), vec![payer]);
        assert!(b.remove(&payer));
        assert!(!a.contains(&payer));
    }
}
