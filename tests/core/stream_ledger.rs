//! Renewing a held reservation in place (the ledger side of mid-stream renewal), without a
//! store: checkpoints keep the hold, the final commit never double-counts them, and every
//! refused renewal leaves the channel and the reservation as they were.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use alloy::signers::local::PrivateKeySigner;

use crate::helpers::{config, domain, ledger_with_channel, payer, voucher};
use x402_upto::Reason;
use x402_upto::ledger::{Detail, OnchainState, Receipt, Reservation};
use x402_upto::verify::VerifiedVoucher;
use x402_upto::{Ledger, typed_data::ChannelId};

fn verified(key: &PrivateKeySigner, id: ChannelId, max: u128) -> VerifiedVoucher {
    voucher(key, id, max)
        .verify_ecdsa(&domain(), key.address())
        .unwrap()
}

/// Stages and applies a renewal as the engine does (here without a store write).
fn renew(r: &mut Reservation, v: VerifiedVoucher, increment: u128, charged: u128) -> u128 {
    let staged = r.stage_renewal(v, increment, charged, 7).unwrap();
    r.apply_renewal(staged).unwrap().charged_amount
}

/// Commits `actual` at `now` and applies it (here without a store write).
fn commit(r: Reservation, actual: u128, now: u64) -> Receipt {
    r.commit(actual, now).unwrap().apply().unwrap()
}

fn reserve(
    ledger: &Ledger,
    key: &PrivateKeySigner,
    id: ChannelId,
    max: u128,
    price: u128,
) -> Reservation {
    ledger
        .verify_and_reserve(voucher(key, id, max), price)
        .unwrap()
}

/// A channel of `balance` streaming: first budget 1000, renewed to 2000 with `checkpoint`
/// charged so far.
fn renewed_once(
    balance: u128,
    checkpoint: u128,
) -> (Ledger, ChannelId, PrivateKeySigner, Reservation) {
    let (ledger, id, key) = ledger_with_channel(balance);
    let mut r = reserve(&ledger, &key, id, 1000, 1000);
    renew(&mut r, verified(&key, id, 2000), 1000, checkpoint);
    (ledger, id, key, r)
}

#[test]
fn checkpoints_keep_the_hold_and_the_final_commit_adds_only_the_rest() {
    let (ledger, id, key) = ledger_with_channel(10_000);
    // A previous request charged 300.
    let r = reserve(&ledger, &key, id, 1000, 1000);
    commit(r, 300, 1);

    let mut r = reserve(&ledger, &key, id, 1300, 1000);
    assert_eq!(renew(&mut r, verified(&key, id, 2300), 1000, 800), 800);
    assert!(ledger.is_held(&id), "a checkpoint keeps the stream's hold");
    let record = ledger.record(&id).unwrap();
    assert_eq!(
        (record.charged, record.signed_max_claimable, record.version),
        (1100, 2300, 2)
    );
    assert_eq!(
        (r.price(), r.checkpointed(), r.voucher().max_claimable()),
        (2000, 800, 2300)
    );
    // Another request is still refused while the stream runs.
    let busy = ledger
        .verify_and_reserve(voucher(&key, id, 2100), 1000)
        .unwrap_err();
    assert_eq!(busy.reason, Reason::ChannelBusy);

    assert_eq!(renew(&mut r, verified(&key, id, 3300), 1000, 1900), 1900);
    let receipt = commit(r, 2500, 9);
    assert_eq!(receipt.charged_amount, 2500, "the stream's whole charge");
    let record = ledger.record(&id).unwrap();
    assert_eq!(
        (record.charged, record.signed_max_claimable, record.version),
        (2800, 3300, 4)
    );
    assert!(!ledger.is_held(&id));
    // The budget is the sum of the increments: above it the commit is refused.
    let mut r = reserve(&ledger, &key, id, 3800, 1000);
    renew(&mut r, verified(&key, id, 4800), 1000, 0);
    let refused = r.commit(2001, 9).unwrap_err();
    assert_eq!(refused.reject.reason, Reason::ChargeExceedsSignedCumulative);
    commit(*refused.reservation, 2000, 9);
    assert_eq!(ledger.record(&id).unwrap().charged, 4800);
}

#[test]
fn a_charge_below_a_checkpoint_does_not_undo_it() {
    let (ledger, id, key, mut r) = renewed_once(10_000, 900);
    // A later, lower checkpoint and a lower final charge both stay at the durable 900.
    assert_eq!(renew(&mut r, verified(&key, id, 3000), 1000, 100), 900);
    let receipt = commit(r, 50, 3);
    assert_eq!(receipt.charged_amount, 900);
    assert_eq!(ledger.record(&id).unwrap().charged, 900);
}

#[test]
fn refused_renewals_change_neither_the_channel_nor_the_reservation() {
    let (ledger, id, key, r) = renewed_once(2_500, 700);
    let before = ledger.record(&id).unwrap();
    // A renewal to `max`, signed by `signer` for `channel`, at a meter of `charged`.
    let check = |signer: &PrivateKeySigner,
                 channel: ChannelId,
                 max: u128,
                 charged: u128,
                 reason: Reason| {
        let v = verified(signer, channel, max);
        let err = r.stage_renewal(v, 1000, charged, 9).unwrap_err();
        assert_eq!(err.reason, reason);
        assert_eq!(ledger.record(&id).unwrap(), before);
        assert_eq!(
            (r.price(), r.checkpointed(), r.voucher().max_claimable()),
            (2000, 700, 2000)
        );
        err
    };
    // Wrong amount and replays: a mismatch proving the voucher the stream holds.
    let err = check(&key, id, 2999, 700, Reason::CumulativeAmountMismatch);
    let Detail::CumulativeMismatch(m) = err.detail else {
        panic!("no corrective detail");
    };
    assert_eq!((m.expected, m.got), (3000, 2999));
    assert_eq!(m.last_voucher.unwrap().signed_max_claimable, 2000);
    check(&key, id, 2000, 700, Reason::CumulativeAmountMismatch);
    check(&key, id, 1000, 700, Reason::CumulativeAmountMismatch);
    // Over the balance (2500).
    check(&key, id, 3000, 700, Reason::CumulativeExceedsBalance);
    // Another channel's voucher.
    let (other, _) =
        ledger.upsert_from_chain(config(key.address(), 2), crate::helpers::onchain(9_000), 0);
    check(&key, other, 3000, 700, Reason::ChannelIdMismatch);
    // Verified for another signer than the channel's.
    let stranger = payer(9);
    check(&stranger, id, 3000, 700, Reason::VoucherSignature);
    // The server's own meter above the budget.
    check(&key, id, 3000, 2001, Reason::ChargeExceedsSignedCumulative);
    // A pending withdrawal, even with enough balance.
    let onchain = OnchainState {
        balance: 9_000,
        withdraw_requested_at: 1_700_000_000,
        ..Default::default()
    };
    ledger.refresh(&id, onchain, 5).unwrap();
    let err = r
        .stage_renewal(verified(&key, id, 3000), 1000, 700, 9)
        .unwrap_err();
    assert_eq!(err.reason, Reason::CumulativeExceedsBalance);
    assert!(matches!(err.detail, Detail::WithdrawalPending { .. }));
    // A staged renewal that is dropped (its write failed) changes nothing either.
    ledger
        .refresh(&id, crate::helpers::onchain(9_000), 6)
        .unwrap();
    let staged = r
        .stage_renewal(verified(&key, id, 3000), 1000, 800, 9)
        .unwrap();
    assert_eq!(staged.record().charged, 800);
    drop(staged);
    let after = ledger.record(&id).unwrap();
    assert_eq!(
        (after.charged, after.signed_max_claimable, after.version),
        (700, 2000, before.version)
    );
    assert!(ledger.is_held(&id));
    drop(r);
    assert!(
        !ledger.is_held(&id),
        "dropping the stream releases it with its checkpoint"
    );
    assert_eq!(ledger.record(&id).unwrap().charged, 700);
}
