//! The paid-request flow through the ledger, without a store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use alloy_primitives::{Address, U256};
use x402_upto::ledger::{Detail, OnchainState, StagedCommit};
use x402_upto::verify::{AllowListErc1271, SignedVoucher, VoucherSigner};
use x402_upto::{Ledger, Reason};

use crate::helpers::{config, domain, ledger_with_channel, onchain, payer, stage, voucher};

fn apply(staged: StagedCommit) -> x402_upto::Receipt {
    staged.apply().expect("the hold is ours")
}

/// A paid request that went through: reserved, charged and applied.
fn charge(
    ledger: &Ledger,
    voucher: SignedVoucher,
    price: u128,
    charged: u128,
    now: u64,
) -> x402_upto::Receipt {
    apply(stage(ledger, voucher, price, charged, now))
}

#[test]
fn accepts_the_first_voucher_at_price_and_charges_the_actual_cost() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let reservation = ledger
        .verify_and_reserve(voucher(&key, id, 100), 100)
        .expect("reserve");
    assert!(ledger.is_held(&id));
    let receipt = apply(reservation.commit(37, 5).expect("commit"));
    assert_eq!(receipt.charged_amount, 37);
    assert_eq!(receipt.snapshot.charged, 37);
    assert_eq!(receipt.version, 1);
    assert_eq!(receipt.payer, key.address());
    let record = ledger.record(&id).expect("known");
    assert_eq!(
        (record.signed_max_claimable, record.last_request_at),
        (100, 5)
    );
    assert!(!ledger.is_held(&id));
}

#[test]
fn the_next_voucher_must_build_on_the_actual_charge_not_the_ceiling() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    charge(&ledger, voucher(&key, id, 100), 100, 40, 1);
    // Ceiling-based accumulation (100 + 100) is wrong; charged-based (40 + 100) is right.
    let wrong = ledger
        .verify_and_reserve(voucher(&key, id, 200), 100)
        .map_err(|r| r.reason);
    assert_eq!(wrong.err(), Some(Reason::CumulativeAmountMismatch));
    let right = ledger
        .verify_and_reserve(voucher(&key, id, 140), 100)
        .expect("reserve");
    assert_eq!(
        apply(right.commit(100, 2).expect("commit"))
            .snapshot
            .charged,
        140
    );
}

#[test]
fn a_mismatched_voucher_gets_a_corrective_snapshot_with_the_last_voucher() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let first = voucher(&key, id, 50);
    charge(&ledger, first.clone(), 50, 20, 1);
    let err = ledger
        .verify_and_reserve(voucher(&key, id, 999), 50)
        .expect_err("mismatch");
    assert_eq!(err.reason, Reason::CumulativeAmountMismatch);
    let Detail::CumulativeMismatch(m) = err.detail else {
        panic!("expected corrective detail, got {:?}", err.detail);
    };
    assert_eq!(
        (m.expected, m.got, m.state.charged, m.state.balance),
        (70, 999, 20, 1_000)
    );
    let last = m.last_voucher.expect("a voucher was accepted");
    assert_eq!(last.signed_max_claimable, 50);
    assert_eq!(last.signature, first.signature);
}

#[test]
fn a_concurrent_request_on_a_held_channel_is_busy_at_once() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let held = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .expect("reserve");
    let second = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .map_err(|r| r.reason);
    assert_eq!(second.err(), Some(Reason::ChannelBusy));
    drop(held);
    assert!(ledger.verify_and_reserve(voucher(&key, id, 10), 10).is_ok());
}

#[test]
fn dropping_a_reservation_releases_the_channel_and_the_voucher_can_be_retried() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let before = ledger.record(&id);
    let v = voucher(&key, id, 10);
    {
        let _failed_handler = ledger.verify_and_reserve(v.clone(), 10).expect("reserve");
    }
    assert_eq!(ledger.record(&id), before);
    ledger
        .verify_and_reserve(v.clone(), 10)
        .expect("reserve")
        .release();
    assert_eq!(ledger.record(&id), before);
    assert_eq!(
        apply(
            ledger
                .verify_and_reserve(v, 10)
                .expect("retry")
                .commit(10, 1)
                .expect("commit")
        )
        .snapshot
        .charged,
        10
    );
}

#[test]
fn dropping_a_staged_commit_releases_without_charging() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let before = ledger.record(&id);
    let staged = stage(&ledger, voucher(&key, id, 10), 10, 10, 1);
    assert_eq!(staged.record().charged, 10);
    assert_eq!(staged.expected_version(), None);
    assert!(ledger.is_held(&id), "held until the write is durable");
    drop(staged); // the store write failed
    assert_eq!(ledger.record(&id), before);
    assert!(!ledger.is_held(&id));
}

#[test]
fn charging_more_than_the_price_is_refused_and_the_reservation_survives() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let reservation = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .expect("reserve");
    let refused = reservation.commit(11, 1).expect_err("over price");
    assert_eq!(refused.reject.reason, Reason::ChargeExceedsSignedCumulative);
    assert!(ledger.is_held(&id));
    assert_eq!(
        apply(refused.reservation.commit(10, 1).expect("commit"))
            .snapshot
            .charged,
        10
    );
}

#[test]
fn different_channels_do_not_block_each_other() {
    let (ledger, a, key) = ledger_with_channel(1_000);
    let (b, _) = ledger.upsert_from_chain(config(key.address(), 2), onchain(1_000), 0);
    let _held_a = ledger
        .verify_and_reserve(voucher(&key, a, 5), 5)
        .expect("reserve a");
    let held_b = ledger
        .verify_and_reserve(voucher(&key, b, 5), 5)
        .expect("reserve b");
    assert_eq!(
        apply(held_b.commit(5, 1).expect("commit")).snapshot.charged,
        5
    );
}

#[test]
fn a_withdrawal_seen_on_chain_stops_service_at_once_but_lets_an_in_flight_request_commit() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let in_flight = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .expect("reserve");
    let withdrawing = OnchainState {
        withdraw_requested_at: 1_700_000_000,
        ..onchain(1_000)
    };
    ledger.refresh(&id, withdrawing, 3).expect("known");
    // Served already: the charge stands and must be claimed before the delay runs out.
    assert_eq!(
        apply(in_flight.commit(10, 4).expect("commit"))
            .snapshot
            .withdraw_requested_at,
        1_700_000_000
    );
    let err = ledger
        .verify_and_reserve(voucher(&key, id, 20), 10)
        .expect_err("stopped");
    assert!(matches!(
        err.detail,
        Detail::WithdrawalPending {
            requested_at: 1_700_000_000
        }
    ));
    let claim = ledger.claimable();
    assert_eq!(claim.len(), 1);
    assert_eq!(claim[0].withdraw_requested_at, 1_700_000_000);
}

#[test]
fn claimable_offers_charged_not_the_ceiling_and_claims_only_move_up() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    charge(&ledger, voucher(&key, id, 100), 100, 30, 1);
    let claim = ledger.claimable();
    assert_eq!(claim.len(), 1);
    assert_eq!((claim[0].claim_total, claim[0].max_claimable), (30, 100));
    assert_eq!(claim[0].entry().totalClaimed, 30);
    ledger.apply_claim(&id, 30, 9).expect("known");
    assert!(ledger.claimable().is_empty());
    ledger.apply_claim(&id, 10, 10).expect("known");
    assert_eq!(ledger.snapshot(&id).map(|s| s.total_claimed), Some(30));
    // The next voucher must be above what was claimed, which charged-based vouchers are.
    assert!(ledger.verify_and_reserve(voucher(&key, id, 31), 1).is_ok());
}

#[test]
fn more_claimed_on_chain_than_charged_rebases_the_channel() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    charge(&ledger, voucher(&key, id, 100), 100, 30, 1);
    let snap = ledger
        .refresh(
            &id,
            OnchainState {
                total_claimed: 80,
                ..onchain(1_000)
            },
            2,
        )
        .expect("known");
    assert_eq!(snap.charged, 80);
    assert_eq!(ledger.last_voucher(&id), None);
    assert!(ledger.claimable().is_empty());
    assert!(ledger.verify_and_reserve(voucher(&key, id, 90), 10).is_ok());
}

#[test]
fn remove_is_refused_while_held_and_works_when_idle() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let held = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .expect("reserve");
    assert_eq!(
        ledger.remove(&id).map_err(|r| r.reason).err(),
        Some(Reason::ChannelBusy)
    );
    drop(held);
    assert!(ledger.remove(&id).is_ok());
    assert_eq!(
        ledger
            .verify_and_reserve(voucher(&key, id, 10), 10)
            .map_err(|r| r.reason)
            .err(),
        Some(Reason::MissingChannel)
    );
}

#[test]
fn refund_vouchers_are_zero_charge() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    charge(&ledger, voucher(&key, id, 100), 100, 30, 1);
    let ok = voucher(&key, id, 30)
        .verify_ecdsa(&domain(), key.address())
        .expect("valid");
    assert_eq!(ledger.check_refund_voucher(&ok).map(|s| s.charged), Ok(30));
    let bad = voucher(&key, id, 31)
        .verify_ecdsa(&domain(), key.address())
        .expect("valid");
    assert_eq!(
        ledger.check_refund_voucher(&bad).map_err(|r| r.reason),
        Err(Reason::CumulativeAmountMismatch)
    );
}

#[tokio::test]
async fn smart_wallet_channels_take_the_erc1271_path() {
    let ledger = x402_upto::Ledger::new(domain());
    let wallet = Address::repeat_byte(0x77);
    let mut cfg = config(wallet, 7);
    cfg.payerAuthorizer = Address::ZERO;
    let (id, _) = ledger.upsert_from_chain(cfg, onchain(1_000), 0);
    let signed = SignedVoucher {
        channel_id: id,
        max_claimable: 10,
        signature: vec![0xaa; 300].into(),
    };
    let err = ledger
        .verify_and_reserve(signed.clone(), 10)
        .expect_err("needs rpc");
    assert_eq!(err.detail, Detail::Erc1271Required);

    let signer = ledger.signer(&id).expect("known");
    assert_eq!(signer, VoucherSigner::Erc1271(wallet));
    let checker = AllowListErc1271::new().allow(wallet, signed.digest(&domain()));
    let verified = signed
        .verify(&domain(), signer, &checker)
        .await
        .expect("wallet approves");
    let receipt = apply(
        ledger
            .reserve(verified, 10)
            .expect("reserve")
            .commit(10, 1)
            .expect("commit"),
    );
    assert_eq!(
        ledger.last_voucher(&id).map(|v| v.signature.len()),
        Some(300)
    );
    assert_eq!(receipt.snapshot.charged, 10);
}

#[test]
fn a_voucher_verified_for_another_signer_is_refused() {
    let (ledger, id, _) = ledger_with_channel(1_000);
    let intruder = payer(9);
    let verified = voucher(&intruder, id, 10)
        .verify_ecdsa(&domain(), intruder.address())
        .expect("self-consistent");
    let err = ledger.reserve(verified, 10).expect_err("wrong signer");
    assert_eq!(err.reason, Reason::VoucherSignature);
    // And through the fast path the forged voucher never touches the channel.
    let before = ledger.record(&id);
    assert_eq!(
        ledger
            .verify_and_reserve(voucher(&intruder, id, 10), 10)
            .map_err(|r| r.reason)
            .err(),
        Some(Reason::VoucherSignature)
    );
    assert_eq!(ledger.record(&id), before);
}

#[test]
fn unknown_channels_are_missing() {
    let (ledger, _, key) = ledger_with_channel(1_000);
    let stranger = domain().channel_id(&config(key.address(), 99));
    let err = ledger
        .verify_and_reserve(voucher(&key, stranger, 10), 10)
        .map_err(|r| r.reason);
    assert_eq!(err.err(), Some(Reason::MissingChannel));
    assert!(ledger.refresh(&stranger, onchain(1), 0).is_err());
}

#[test]
fn contending_threads_serialise_on_one_channel_and_lose_no_commit() {
    let (ledger, id, key) = ledger_with_channel(u128::MAX / 2);
    let committed = Arc::new(AtomicU64::new(0));
    let busy = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (ledger, key, committed, busy) =
                (ledger.clone(), key.clone(), committed.clone(), busy.clone());
            s.spawn(move || {
                for _ in 0..50 {
                    let charged = ledger.snapshot(&id).map(|s| s.charged).unwrap_or_default();
                    match ledger.verify_and_reserve(voucher(&key, id, charged + 3), 3) {
                        Ok(r) => {
                            apply(r.commit(3, 0).expect("commit"));
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.reason == Reason::ChannelBusy => {
                            busy.fetch_add(1, Ordering::Relaxed);
                        }
                        // Another thread committed between our read and our reserve.
                        Err(e) => assert_eq!(e.reason, Reason::CumulativeAmountMismatch),
                    }
                }
            });
        }
    });
    let n = committed.load(Ordering::Relaxed);
    assert!(n > 0);
    let record = ledger.record(&id).expect("known");
    assert_eq!(record.charged, u128::from(n) * 3);
    assert_eq!(record.version, n);
    assert_eq!(record.onchain.refund_nonce, U256::ZERO);
}

/// A cache over a shared store: a newer stored version replaces the cached record, an older
/// one does not, and under a hold only the chain side comes in (the held request's commit
/// then refuses or rebases against the store; it never adds its charge to a state its
/// voucher was not checked against).
#[test]
fn merge_takes_newer_versions_but_leaves_a_held_voucher_state_alone() {
    let (ledger, id, key) = ledger_with_channel(10_000);
    let mut stored = ledger.record(&id).expect("record");
    stored.charged = 300;
    stored.signed_max_claimable = 300;
    stored.version = 4;
    assert_eq!(ledger.merge([stored.clone()]), 1);
    assert_eq!(ledger.snapshot(&id).map(|s| s.charged), Some(300));
    let mut older = stored.clone();
    older.version = 3;
    older.charged = 100;
    assert_eq!(ledger.merge([older]), 0);
    assert_eq!(ledger.snapshot(&id).map(|s| s.charged), Some(300));

    let held = ledger
        .verify_and_reserve(voucher(&key, id, 400), 100)
        .expect("reserve");
    let mut newer = stored.clone();
    newer.version = 5;
    newer.charged = 350;
    newer.onchain.withdraw_requested_at = 77;
    newer.onchain_synced_at = 9;
    assert_eq!(ledger.merge([newer]), 0);
    let cached = ledger.record(&id).expect("record");
    assert_eq!((cached.version, cached.charged), (4, 300));
    assert_eq!(cached.onchain.withdraw_requested_at, 77);
    // The held request still commits on the state it was checked against (version 4):
    // the store's compare-and-set is what stops it.
    let staged = held.commit(100, 10).expect("commit");
    assert_eq!(staged.expected_version(), Some(4));
}

/// Restore fills a sized ledger in one pass: every record comes back as stored, and a
/// record for a channel already in memory replaces its state but not a hold on it.
#[test]
fn restore_loads_every_record_and_keeps_a_hold() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let held = ledger
        .verify_and_reserve(voucher(&key, id, 100), 100)
        .expect("reserve");
    let mut stored = ledger.record(&id).expect("known");
    stored.charged = 7;
    stored.version = 3;
    let others: Vec<_> = (2u64..2_002)
        .map(|salt| {
            let cfg = config(key.address(), salt);
            let id = domain().channel_id(&cfg);
            let mut r = x402_upto::ledger::ChannelRecord::from_chain(id, cfg, onchain(500), 9);
            r.charged = u128::from(salt);
            r.version = salt;
            r
        })
        .collect();
    let restored = ledger.restore(others.iter().cloned().chain([stored.clone()]));
    assert_eq!(restored, 2_001);
    assert_eq!(ledger.len(), 2_001);
    for r in &others {
        assert_eq!(ledger.record(&r.channel_id).as_ref(), Some(r));
    }
    assert_eq!(ledger.record(&id), Some(stored));
    assert!(ledger.is_held(&id));
    drop(held);
    assert!(!ledger.is_held(&id));
}

#[test]
fn visit_sees_every_record_and_its_hold_without_copying() {
    let (ledger, id, key) = ledger_with_channel(1_000);
    let other = payer(2);
    let (id2, _) = ledger.upsert_from_chain(config(other.address(), 1), onchain(500), 0);
    let held = ledger
        .verify_and_reserve(voucher(&key, id, 10), 10)
        .expect("reserve");
    let mut seen = Vec::new();
    ledger.visit(|r, held| seen.push((r.channel_id, r.onchain.balance, held)));
    seen.sort();
    let mut want = vec![(id, 1_000, true), (id2, 500, false)];
    want.sort();
    assert_eq!(seen, want);
    drop(held);
    let mut holds = 0;
    ledger.visit(|_, held| holds += usize::from(held));
    assert_eq!(holds, 0);
}
