//! Payers the operator blocked (`Engine::set_blocked_payers`, the admin API's block list):
//! their vouchers and deposits are refused with `payer_blocked` before anything is read,
//! held, written or sent; their refunds are still served; unblocked, they pay again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use support::Fixture;
use x402_upto::engine::BlockedPayers;

const BLOCKED: &str = "invalid_batch_settlement_evm_payer_blocked";

#[tokio::test]
async fn a_blocked_payer_is_refused_with_nothing_changed_and_may_still_refund() {
    let f = Fixture::new().await;
    let blocked = BlockedPayers::default();
    assert!(f.engine.set_blocked_payers(blocked.clone()));
    assert!(!f.engine.set_blocked_payers(BlockedPayers::default()));
    let config = f.config(1);
    f.fund(&config, 10_000);
    f.send_ok("/paid?charge=400", &f.voucher_payload(&config, 1000))
        .await;

    blocked.insert(f.payer.address());
    let before = f.state().await;
    let (runs, reads, deposit_calls) = (
        f.handler_runs.load(Ordering::SeqCst),
        f.chain.reads.load(Ordering::SeqCst),
        f.chain.deposit_calls.load(Ordering::SeqCst),
    );
    // A voucher, and a deposit on a new channel: both refused, nothing read or sent.
    let a = f.send("/paid", &f.voucher_payload(&config, 1400)).await;
    assert_eq!(
        (a.status, a.reason()),
        (StatusCode::PAYMENT_REQUIRED, BLOCKED.to_owned())
    );
    assert!(a.required()["error"] == BLOCKED);
    let fresh = f.config(2);
    let a = f
        .send("/paid", &f.deposit_payload(&fresh, 1000, 5_000))
        .await;
    assert_eq!(a.reason(), BLOCKED);
    assert_eq!(f.state().await, before);
    assert_eq!(f.handler_runs.load(Ordering::SeqCst), runs);
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), reads);
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), deposit_calls);

    // Unblocked: the same voucher pays.
    blocked.remove(&f.payer.address());
    f.send_ok("/paid?charge=100", &f.voucher_payload(&config, 1400))
        .await;

    // Blocked again, the payer can still take its money back.
    blocked.insert(f.payer.address());
    let a = f
        .send_ok("/paid", &f.refund_payload(&config, 500, None))
        .await;
    assert_eq!(a.response()["amount"], "9500");
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 1);
}
