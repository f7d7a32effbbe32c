//! Guards on the two transactions a client can make the relayer pay for: deposits and
//! cooperative refunds.
//!
//! A deposit header is a bearer instrument for gas: whoever sees it can send it again. So a
//! deposit takes a single-flight slot for its channel and for its ERC-3009 authorization
//! nonce before anything is estimated or sent (a concurrent duplicate gets `channel_busy`),
//! and an authorization that was submitted is remembered (bounded) so a replay is refused
//! without a transaction.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use alloy_primitives::B256;
use parking_lot::Mutex;

use crate::typed_data::ChannelId;

/// Limits on client-requested cooperative refunds, each paid by the relayer. A refund
/// voucher is also spent by its refund ([`crate::ledger::RefundMarks`]), whatever these say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundLimits {
    /// Smallest partial refund (atomic units). A refund of the whole remainder is always
    /// allowed, even below this. 0: no minimum.
    pub min_partial: u128,
    /// Most refunds per channel per `window`; at least 1.
    pub max_per_window: u32,
    /// The rate window.
    pub window: Duration,
}

impl Default for RefundLimits {
    fn default() -> Self {
        Self {
            // 0.001 USDC: about what a refund's ~55k gas costs on an L2 at a few gwei-cents;
            // below it the relayer pays more than the payer gets back.
            min_partial: 1_000,
            max_per_window: 4,
            window: Duration::from_secs(3_600),
        }
    }
}

/// Authorizations remembered as submitted (oldest forgotten first). A forgotten one is still
/// refused by the token, at the cost of one `eth_estimateGas`, never a transaction.
pub(crate) const USED_AUTHORIZATIONS: usize = 100_000;

/// Why a deposit may not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DepositBlocked {
    /// A deposit on this channel, or with this authorization, is in flight.
    InFlight,
    /// This authorization was already submitted by this server.
    Used,
}

#[derive(Debug, Default)]
struct State {
    channels: HashSet<ChannelId>,
    nonces: HashSet<B256>,
    used: HashSet<B256>,
    order: VecDeque<B256>,
}

/// Deposits in flight and authorizations already submitted.
#[derive(Debug, Default)]
pub(crate) struct Deposits {
    state: Mutex<State>,
}

impl Deposits {
    /// Takes the single-flight slot of `channel` and of authorization `nonce`.
    pub(crate) fn begin(
        &self,
        channel: ChannelId,
        nonce: B256,
    ) -> Result<DepositFlight<'_>, DepositBlocked> {
        let mut s = self.state.lock();
        if s.used.contains(&nonce) {
            return Err(DepositBlocked::Used);
        }
        if s.channels.contains(&channel) || s.nonces.contains(&nonce) {
            return Err(DepositBlocked::InFlight);
        }
        s.channels.insert(channel);
        s.nonces.insert(nonce);
        Ok(DepositFlight {
            deposits: self,
            channel,
            nonce,
            submitted: false,
        })
    }

    fn mark_used(s: &mut State, nonce: B256) {
        if s.used.insert(nonce) {
            s.order.push_back(nonce);
        }
        while s.used.len() > USED_AUTHORIZATIONS {
            match s.order.pop_front() {
                Some(old) => {
                    s.used.remove(&old);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    fn is_used(&self, nonce: &B256) -> bool {
        self.state.lock().used.contains(nonce)
    }
}

/// A deposit's single-flight slot, released on drop. Once [`Self::submitting`] was called,
/// the authorization counts as used when the slot is released (the transaction may be
/// mined, or be in the mempool still), unless [`Self::not_sent`] says nothing was sent.
#[derive(Debug)]
pub(crate) struct DepositFlight<'a> {
    deposits: &'a Deposits,
    channel: ChannelId,
    nonce: B256,
    submitted: bool,
}

impl DepositFlight<'_> {
    /// About to estimate and send: from here on the authorization may be consumed (also if
    /// the request is dropped mid-way).
    pub(crate) fn submitting(&mut self) {
        self.submitted = true;
    }

    /// The chain refused before anything was broadcast (simulation failed, node down): the
    /// same authorization may be tried again.
    pub(crate) fn not_sent(&mut self) {
        self.submitted = false;
    }
}

impl Drop for DepositFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.deposits.state.lock();
        s.channels.remove(&self.channel);
        s.nonces.remove(&self.nonce);
        if self.submitted {
            Deposits::mark_used(&mut s, self.nonce);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChannelId {
        ChannelId(B256::repeat_byte(n))
    }

    #[test]
    fn one_flight_per_channel_and_per_authorization() {
        let d = Deposits::default();
        let n = B256::repeat_byte(9);
        let first = d.begin(id(1), n).expect("free");
        assert_eq!(
            d.begin(id(1), B256::repeat_byte(8)).err(),
            Some(DepositBlocked::InFlight)
        );
        assert_eq!(d.begin(id(2), n).err(), Some(DepositBlocked::InFlight));
        drop(first);
        // Never submitted (refused before any send): free again, not used.
        assert!(!d.is_used(&n));
        let mut again = d.begin(id(1), n).expect("free again");
        again.submitting();
        drop(again);
        assert_eq!(d.begin(id(1), n).err(), Some(DepositBlocked::Used));
        let mut other = d
            .begin(id(1), B256::repeat_byte(7))
            .expect("another authorization");
        other.submitting();
        other.not_sent();
        drop(other);
        assert!(d.begin(id(1), B256::repeat_byte(7)).is_ok());
    }

    #[test]
    fn the_used_set_is_bounded() {
        let d = Deposits::default();
        for i in 0..(USED_AUTHORIZATIONS as u64 + 10) {
            let mut f = d
                .begin(id(1), B256::from(alloy_primitives::U256::from(i)))
                .expect("free");
            f.submitting();
        }
        let s = d.state.lock();
        assert_eq!(s.used.len(), USED_AUTHORIZATIONS);
        assert!(
            !s.used.contains(&B256::ZERO),
            "the oldest is forgotten first"
        );
    }
}
