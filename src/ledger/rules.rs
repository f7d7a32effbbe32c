//! The cumulative-voucher rules of one channel, as pure functions of its record.
//!
//! The rules (spec "Request Processing"): a voucher pays for a request of maximum price `p`
//! only if `maxClaimableAmount == chargedCumulativeAmount + p`, `maxClaimableAmount <=
//! balance`, `maxClaimableAmount > totalClaimed`, and no timed withdrawal is pending. The
//! data lives in `channel.rs`; a broken rule is a [`Reject`] (`reject.rs`).

use crate::ledger::channel::ChannelRecord;
use crate::ledger::reject::{Detail, Mismatch, Reject};
use crate::reason::Reason;

impl ChannelRecord {
    /// The rules for a paid request of maximum price `price` carrying ceiling `max_claimable`.
    pub fn check_voucher(&self, max_claimable: u128, price: u128) -> Result<(), Reject> {
        self.no_withdrawal_pending()?;
        let expected = self.charged.checked_add(price);
        if expected != Some(max_claimable) {
            return Err(self.mismatch(expected.unwrap_or(u128::MAX), max_claimable));
        }
        self.within_balance_above_claimed(max_claimable)
    }

    /// The rules for renewing a held stream in place: the held voucher's ceiling `held` is
    /// extended by exactly `increment` to `max_claimable`, within the balance, above
    /// `totalClaimed`, with no withdrawal pending. A mismatch (a replayed or stale voucher)
    /// carries this record as the corrective state.
    pub fn check_extension(
        &self,
        held: u128,
        max_claimable: u128,
        increment: u128,
    ) -> Result<(), Reject> {
        self.no_withdrawal_pending()?;
        let expected = held.checked_add(increment);
        if increment == 0 || expected != Some(max_claimable) {
            return Err(self.mismatch(expected.unwrap_or(u128::MAX), max_claimable));
        }
        self.within_balance_above_claimed(max_claimable)
    }

    /// The zero-charge refund-voucher rule: `max == charged` and `max >= totalClaimed`.
    pub fn check_refund_voucher(&self, max_claimable: u128) -> Result<(), Reject> {
        if max_claimable != self.charged {
            return Err(self.mismatch(self.charged, max_claimable));
        }
        if max_claimable < self.onchain.total_claimed {
            return Err(self.below_claimed(max_claimable));
        }
        Ok(())
    }

    fn no_withdrawal_pending(&self) -> Result<(), Reject> {
        if self.onchain.withdraw_requested_at == 0 {
            return Ok(());
        }
        // No spec code says "withdrawal pending"; the channel's effective balance for new
        // vouchers is treated as exhausted, hence `cumulative_exceeds_balance`.
        let requested_at = self.onchain.withdraw_requested_at;
        Err(Reject::with(
            Reason::CumulativeExceedsBalance,
            Some(self.channel_id),
            Detail::WithdrawalPending { requested_at },
        ))
    }

    fn within_balance_above_claimed(&self, max_claimable: u128) -> Result<(), Reject> {
        if max_claimable > self.onchain.balance {
            let balance = self.onchain.balance;
            return Err(Reject::with(
                Reason::CumulativeExceedsBalance,
                Some(self.channel_id),
                Detail::ExceedsBalance {
                    max_claimable,
                    balance,
                },
            ));
        }
        if max_claimable <= self.onchain.total_claimed {
            return Err(self.below_claimed(max_claimable));
        }
        Ok(())
    }

    fn mismatch(&self, expected: u128, got: u128) -> Reject {
        Reject::with(
            Reason::CumulativeAmountMismatch,
            Some(self.channel_id),
            Detail::CumulativeMismatch(Box::new(Mismatch {
                expected,
                got,
                state: self.snapshot(),
                last_voucher: self.last_voucher(),
            })),
        )
    }

    fn below_claimed(&self, max_claimable: u128) -> Reject {
        let total_claimed = self.onchain.total_claimed;
        Reject::with(
            Reason::CumulativeBelowClaimed,
            Some(self.channel_id),
            Detail::BelowClaimed {
                max_claimable,
                total_claimed,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(charged: u128, balance: u128, total_claimed: u128) -> ChannelRecord {
        ChannelRecord::for_test(charged, balance, total_claimed)
    }

    #[test]
    fn accepts_a_ceiling_of_exactly_charged_plus_price() {
        assert_eq!(record(100, 1_000, 50).check_voucher(150, 50), Ok(()));
    }

    #[test]
    fn rejects_any_other_ceiling_with_a_corrective_snapshot() {
        let r = record(100, 1_000, 50);
        for got in [149, 151, 0, u128::MAX] {
            let err = r.check_voucher(got, 50).err();
            assert_eq!(
                err.as_ref().map(|e| e.reason),
                Some(Reason::CumulativeAmountMismatch)
            );
            match err.map(|e| e.detail) {
                Some(Detail::CumulativeMismatch(m)) => {
                    assert_eq!(m.expected, 150);
                    assert_eq!(m.state.charged, 100);
                }
                other => panic!("unexpected detail {other:?}"),
            }
        }
    }

    #[test]
    fn an_overflowing_price_is_a_mismatch_not_a_panic() {
        let r = record(u128::MAX, u128::MAX, 0);
        let err = r.check_voucher(u128::MAX, 1).map_err(|e| e.reason);
        assert_eq!(err, Err(Reason::CumulativeAmountMismatch));
    }

    #[test]
    fn rejects_a_ceiling_above_balance() {
        let err = record(100, 120, 0)
            .check_voucher(150, 50)
            .map_err(|e| e.reason);
        assert_eq!(err, Err(Reason::CumulativeExceedsBalance));
    }

    #[test]
    fn rejects_a_ceiling_not_above_claimed() {
        let r = record(100, 1_000, 100);
        assert_eq!(
            r.check_voucher(100, 0).map_err(|e| e.reason),
            Err(Reason::CumulativeBelowClaimed)
        );
    }

    #[test]
    fn a_pending_withdrawal_stops_service() {
        let mut r = record(100, 1_000, 0);
        r.onchain.withdraw_requested_at = 1_700_000_000;
        let err = r.check_voucher(150, 50).err();
        assert_eq!(
            err.as_ref().map(|e| e.reason),
            Some(Reason::CumulativeExceedsBalance)
        );
        assert!(matches!(
            err.map(|e| e.detail),
            Some(Detail::WithdrawalPending { .. })
        ));
    }

    #[test]
    fn refund_vouchers_must_equal_charged_and_may_equal_claimed() {
        let r = record(100, 1_000, 100);
        assert_eq!(r.check_refund_voucher(100), Ok(()));
        assert_eq!(
            r.check_refund_voucher(101).map_err(|e| e.reason),
            Err(Reason::CumulativeAmountMismatch)
        );
        let mut stale = record(100, 1_000, 100);
        stale.onchain.total_claimed = 120;
        stale.charged = 100;
        assert_eq!(
            stale.check_refund_voucher(100).map_err(|e| e.reason),
            Err(Reason::CumulativeBelowClaimed)
        );
    }
}
