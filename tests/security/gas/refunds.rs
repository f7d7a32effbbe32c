//! Refunds: a refund request is honoured once (its voucher is spent by it), partial refunds
//! have a minimum, and each channel a refund rate. Every refusal is a 402 with a reason and
//! a message, changes nothing and sends nothing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use alloy_primitives::U256;
use axum::http::StatusCode;
use x402_upto::engine::{ChainAccess, Engine, RefundLimits};
use x402_upto::wire::{ResourceInfo, encode_header};
use x402_upto::{Ledger, Reason, Store};

use super::anvil;
use super::support::{Fixture, PRICE, engine_config};

const SPENT: &str = "invalid_batch_settlement_evm_refund_already_executed";
const RATE: &str = "invalid_batch_settlement_evm_refund_rate_limited";
const AMOUNT: &str = "invalid_batch_settlement_evm_refund_amount_invalid";

/// Sends `payload`, expects a 402 with `reason`, no refund call and no state change.
async fn refused(f: &Fixture, payload: &serde_json::Value, reason: &str) -> String {
    let refunds = f.chain.refunds.load(Ordering::SeqCst);
    let before = f.state().await;
    let a = f.send("/paid", payload).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{:?}", a.body);
    assert_eq!(a.reason(), reason);
    assert_eq!(
        f.chain.refunds.load(Ordering::SeqCst),
        refunds,
        "a refund was sent"
    );
    assert_eq!(f.state().await, before, "state changed");
    let message = a.body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty());
    message
}

#[tokio::test]
async fn a_replayed_partial_refund_is_refused_whatever_amount_it_names() {
    let f = Fixture::new().await;
    let config = f.config(1);
    let id = f.fund(&config, 10_000);
    let a = f
        .send("/paid?charge=100", &f.voucher_payload(&config, 1000))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let refund = f.refund_payload(&config, 100, Some(1000));
    let a = f.send_ok("/paid", &refund).await;
    assert_eq!(a.response()["amount"], "1000");
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 1);

    let msg = refused(&f, &refund, SPENT).await;
    assert!(msg.contains("cumulative 100"), "{msg}");
    // The amount is not signed: the same voucher with another amount, or none (everything),
    // is the same spent voucher.
    refused(&f, &f.refund_payload(&config, 100, Some(2000)), SPENT).await;
    refused(&f, &f.refund_payload(&config, 100, None), SPENT).await;
    let s = f.engine.ledger().snapshot(&id).unwrap();
    assert_eq!(
        (s.balance, s.charged, s.refund_nonce),
        (9_000, 100, U256::from(1))
    );

    // A paid request moves the cumulative: the payer may ask again.
    let a = f
        .send("/paid?charge=50", &f.voucher_payload(&config, 1100))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    f.send_ok("/paid", &f.refund_payload(&config, 150, Some(1000)))
        .await;
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 2);
}

/// The spent-voucher mark is durable: it is in the stored record, and an engine restored from
/// that store refuses the replay (the refund path never reaches the chain).
#[tokio::test]
async fn the_spent_refund_mark_survives_a_restart() {
    let f = Fixture::new().await;
    let config = f.config(2);
    let id = f.fund(&config, 10_000);
    assert_eq!(
        f.send("/paid?charge=100", &f.voucher_payload(&config, 1000))
            .await
            .status,
        StatusCode::OK
    );
    let refund = f.refund_payload(&config, 100, Some(1000));
    assert_eq!(f.send("/paid", &refund).await.status, StatusCode::OK);
    let stored = f.engine.store().load(id).await.unwrap().expect("stored");
    assert_eq!(stored.refunds.refunded_at, Some(100));
    assert_eq!(
        stored.onchain.balance, 9_000,
        "the refund's state is stored too"
    );
    assert_eq!(
        stored.version,
        f.engine.ledger().record(&id).unwrap().version
    );

    let chain = Arc::clone(&f.chain);
    let restarted = Engine::new(
        engine_config(),
        Ledger::new(f.domain().clone()),
        Arc::clone(f.engine.store()),
        Some(chain as Arc<dyn ChainAccess>),
    )
    .unwrap();
    assert_eq!(restarted.restore().await.unwrap(), 1);
    let resource = ResourceInfo {
        url: "http://localhost/paid".into(),
        description: None,
        mime_type: None,
    };
    let header = encode_header(&refund);
    let refusal = restarted
        .authorize(Some(header.as_bytes()), PRICE, &resource)
        .await
        .expect_err("replay after restart");
    assert_eq!(refusal.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(refusal.reason, Some(Reason::RefundAlreadyExecuted));
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_partial_refund_below_the_minimum_is_refused_but_the_whole_remainder_is_not() {
    let f = Fixture::new().await;
    f.engine
        .set_refund_limits(RefundLimits {
            min_partial: 5_000,
            ..RefundLimits::default()
        })
        .unwrap();
    let config = f.config(3);
    f.fund(&config, 20_000);
    assert_eq!(
        f.send("/paid?charge=100", &f.voucher_payload(&config, 1000))
            .await
            .status,
        StatusCode::OK
    );
    let msg = refused(&f, &f.refund_payload(&config, 100, Some(4_999)), AMOUNT).await;
    assert!(msg.contains("at least 5000"), "{msg}");
    f.send_ok("/paid", &f.refund_payload(&config, 100, Some(5_000)))
        .await;

    // A small channel: its whole remainder (2,900) is below the minimum and still allowed.
    let small = f.config(4);
    let id = f.fund(&small, 3_000);
    assert_eq!(
        f.send("/paid?charge=100", &f.voucher_payload(&small, 1000))
            .await
            .status,
        StatusCode::OK
    );
    refused(&f, &f.refund_payload(&small, 100, Some(2_899)), AMOUNT).await;
    let a = f
        .send_ok("/paid", &f.refund_payload(&small, 100, Some(2_900)))
        .await;
    assert_eq!(a.response()["amount"], "2900");
    assert!(f.engine.ledger().snapshot(&id).is_none(), "fully refunded");
}

#[tokio::test]
async fn refunds_beyond_the_per_channel_rate_are_refused_until_the_window_passes() {
    let f = Fixture::new().await;
    f.engine
        .set_refund_limits(RefundLimits {
            min_partial: 1,
            max_per_window: 2,
            window: Duration::from_secs(3_600),
        })
        .unwrap();
    let config = f.config(5);
    let id = f.fund(&config, 100_000);
    let mut charged = 0u128;
    for round in 0..3 {
        let a = f
            .send(
                "/paid?charge=10",
                &f.voucher_payload(&config, charged + PRICE),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        charged += 10;
        let refund = f.refund_payload(&config, charged, Some(100));
        if round < 2 {
            assert_eq!(f.send("/paid", &refund).await.status, StatusCode::OK);
        } else {
            let msg = refused(&f, &refund, RATE).await;
            assert!(msg.contains("at most 2 refunds"), "{msg}");
        }
    }
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 2);
    // Another channel has its own budget.
    let other = f.config(6);
    f.fund(&other, 10_000);
    assert_eq!(
        f.send("/paid?charge=10", &f.voucher_payload(&other, PRICE))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        f.send("/paid", &f.refund_payload(&other, 10, Some(100)))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        f.engine.ledger().record(&id).unwrap().refunds.window_count,
        2
    );
}

#[tokio::test]
async fn refund_limits_that_would_refuse_everything_are_rejected() {
    let f = Fixture::new().await;
    for bad in [
        RefundLimits {
            max_per_window: 0,
            ..RefundLimits::default()
        },
        RefundLimits {
            window: Duration::ZERO,
            ..RefundLimits::default()
        },
    ] {
        assert!(f.engine.set_refund_limits(bad).is_err(), "{bad:?}");
    }
}

/// On anvil: the replay of a partial refund of 1,000. The second copy gets a 402
/// without a transaction; `refundNonce` stays at 1 and the balance where the first left it.
#[tokio::test]
async fn on_chain_a_replayed_partial_refund_sends_nothing() {
    let a = anvil().await;
    let f = &a.f;
    let config = f.config(1);
    let id = f.id(&config);
    let p = f.deposit_payload_with(&config, 1000, 100_000, a.erc3009(&config, 100_000, 1));
    assert_eq!(f.send("/paid?charge=300", &p).await.status, StatusCode::OK);
    let refund = f.refund_payload(&config, 300, Some(1000));
    let r = f.send("/paid", &refund).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let after = a.client.channel_state(id).await.unwrap();
    assert_eq!(after.refund_nonce, U256::from(1));
    assert_eq!(after.balance, 99_000);

    let nonce = a.relayer_nonce().await;
    let before = f.state().await;
    for copy in [Some(1000), None] {
        let r = f.send("/paid", &f.refund_payload(&config, 300, copy)).await;
        assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(r.reason(), SPENT);
    }
    assert_eq!(
        a.relayer_nonce().await,
        nonce,
        "no transaction for a replay"
    );
    assert_eq!(f.state().await, before);
    assert_eq!(a.client.channel_state(id).await.unwrap(), after);
}
