//! The payment layer on an axum router: the 402 offer, the voucher path, "upto" charging,
//! the corrective 402, deposits and refunds through the chain double, busy channels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::atomic::Ordering;

use axum::http::StatusCode;
use serde_json::json;
use support::Fixture;
use x402_upto::Store;

#[tokio::test]
async fn an_unpaid_request_gets_a_402_with_the_batch_settlement_offer() {
    let f = Fixture::new().await;
    let a = f.send_raw("/paid", None).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.headers["cache-control"], "no-store");
    let pr = a.required();
    assert_eq!(pr["x402Version"], 2);
    assert_eq!(pr["resource"]["url"], "http://localhost/paid");
    assert_eq!(pr["resource"]["description"], "test resource");
    let offer = &pr["accepts"][0];
    assert_eq!(offer["scheme"], "batch-settlement");
    assert_eq!(offer["network"], "eip155:31337");
    assert_eq!(offer["amount"], "1000");
    assert_eq!(offer["maxTimeoutSeconds"], 300);
    assert_eq!(offer["extra"]["withdrawDelay"], 900);
    assert_eq!(offer["extra"]["name"], "USDC");
    assert_eq!(offer["extra"]["version"], "2");
    assert_eq!(
        offer["extra"]["receiverAuthorizer"],
        "0x3C3c3c3c3C3c3C3C3c3c3C3C3c3C3C3C3C3c3C3C"
            .parse::<alloy_primitives::Address>()
            .unwrap()
            .to_checksum(None)
    );
    // The body says the same for humans.
    assert_eq!(a.body["accepts"], pr["accepts"]);
    assert!(a.body["message"].is_string());
    assert_eq!(f.handler_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_free_route_is_untouched() {
    let f = Fixture::new().await;
    let a = f.send_raw("/free", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.headers.get("payment-required").is_none());
}

#[tokio::test]
async fn vouchers_pay_the_actual_charge_and_the_response_says_so() {
    let f = Fixture::new().await;
    let config = f.config(1);
    let id = f.fund(&config, 10_000);

    let a = f
        .send_ok("/paid?charge=400", &f.voucher_payload(&config, 1000))
        .await;
    let r = a.response();
    assert_eq!(r["success"], true);
    assert_eq!(r["transaction"], "");
    assert_eq!(r["amount"], "");
    assert_eq!(r["network"], "eip155:31337");
    assert_eq!(r["payer"], f.payer.address().to_checksum(None));
    assert_eq!(r["extra"]["chargedAmount"], "400");
    let cs = &r["extra"]["channelState"];
    assert_eq!(cs["channelId"], json!(id.0));
    assert_eq!(cs["balance"], "10000");
    assert_eq!(cs["totalClaimed"], "0");
    assert_eq!(cs["withdrawRequestedAt"], 0);
    assert_eq!(cs["refundNonce"], "0");
    assert_eq!(cs["chargedCumulativeAmount"], "400");

    // No charge reported: the full price.
    let a = f.send_ok("/paid", &f.voucher_payload(&config, 1400)).await;
    assert_eq!(a.response()["extra"]["chargedAmount"], "1000");
    assert_eq!(
        a.response()["extra"]["channelState"]["chargedCumulativeAmount"],
        "1400"
    );
    // Zero is a valid charge.
    let a = f
        .send("/paid?charge=0", &f.voucher_payload(&config, 2400))
        .await;
    assert_eq!(a.response()["extra"]["chargedAmount"], "0");

    // Durable before the response: the store already holds the latest voucher.
    let stored = f.engine.store().load(id).await.unwrap().unwrap();
    assert_eq!((stored.charged, stored.signed_max_claimable), (1400, 2400));
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_stale_voucher_gets_a_corrective_402_with_the_last_voucher() {
    let f = Fixture::new().await;
    let config = f.config(2);
    f.fund(&config, 10_000);
    let first = f.voucher_payload(&config, 1000);
    let a = f.send("/paid?charge=250", &first).await;
    assert_eq!(a.status, StatusCode::OK);

    // Replay of the same voucher: the ceiling must now be 250 + 1000.
    let before = f.state().await;
    let a = f.send("/paid", &first).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    // The offer describes the resource as the unpaid 402 does (built only for a refusal).
    assert_eq!(a.required()["resource"]["url"], "http://localhost/paid");
    assert_eq!(a.required()["resource"]["description"], "test resource");
    let extra = &a.required()["accepts"][0]["extra"];
    assert_eq!(extra["channelState"]["chargedCumulativeAmount"], "250");
    assert_eq!(extra["voucherState"]["signedMaxClaimable"], "1000");
    assert_eq!(
        extra["voucherState"]["signature"],
        first["payload"]["voucher"]["signature"]
    );
    assert_eq!(f.state().await, before);

    // The client resyncs and pays.
    let a = f.send("/paid", &f.voucher_payload(&config, 1250)).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_failing_handler_charges_nothing_and_the_voucher_stays_usable() {
    let f = Fixture::new().await;
    let config = f.config(3);
    f.fund(&config, 10_000);
    let p = f.voucher_payload(&config, 1000);
    f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    let before = f.state().await;
    let p2 = f.voucher_payload(&config, 2000);
    let a = f.send("/paid?status=503", &p2).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.headers.get("payment-response").is_none());
    assert_eq!(f.state().await, before);
    assert!(!f.engine.ledger().is_held(&f.id(&config)));
    let a = f.send("/paid", &p2).await;
    assert_eq!(a.status, StatusCode::OK);
    drop(p);
}

#[tokio::test]
async fn a_charge_above_the_maximum_is_refused_with_nothing_charged() {
    let f = Fixture::new().await;
    let config = f.config(4);
    f.fund(&config, 10_000);
    f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    let before = f.state().await;
    let a = f
        .send("/paid?charge=1001", &f.voucher_payload(&config, 2000))
        .await;
    assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = a.response();
    assert_eq!(r["success"], false);
    assert_eq!(
        r["errorReason"],
        "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative"
    );
    assert_eq!(
        a.body["error"],
        "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative"
    );
    assert_eq!(f.state().await, before);
}

#[tokio::test]
async fn a_dynamic_price_is_the_maximum_of_that_request() {
    let f = Fixture::new().await;
    let a = f.send_raw("/dyn?size=big", None).await;
    assert_eq!(a.required()["accepts"][0]["amount"], "5000");
    let a = f.send_raw("/dyn", None).await;
    assert_eq!(a.required()["accepts"][0]["amount"], "500");
    // A voucher built for the 1000 offer does not match the 500 offer.
    let config = f.config(5);
    f.fund(&config, 10_000);
    let a = f.send("/dyn", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.reason(), "invalid_payment_requirements");
}

#[tokio::test]
async fn an_unknown_channel_is_loaded_from_chain_or_refused_when_empty() {
    let f = Fixture::new().await;
    // No negative caching here, so the funding below is seen at once (the cache itself is
    // tested in tests/server/cold_reads.rs).
    f.engine
        .set_cold_read_limits(x402_upto::engine::ColdReadLimits {
            negative_ttl: std::time::Duration::ZERO,
            ..Default::default()
        });
    let config = f.config(6);
    let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_channel_not_found");
    assert!(f.engine.ledger().is_empty());
    f.fund(&config, 5000);
    let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_deposit_is_submitted_and_its_voucher_served() {
    let f = Fixture::new().await;
    let config = f.config(7);
    let a = f
        .send_ok(
            "/paid?charge=300",
            &f.deposit_payload(&config, 1000, 10_000),
        )
        .await;
    let r = a.response();
    assert_eq!(r["amount"], "10000");
    assert_eq!(
        r["transaction"],
        json!(alloy_primitives::B256::repeat_byte(0xd0))
    );
    assert_eq!(r["extra"]["chargedAmount"], "300");
    assert_eq!(r["extra"]["channelState"]["balance"], "10000");
    // A top-up: the voucher is checked against balance + deposit.
    let a = f
        .send_ok("/paid", &f.deposit_payload(&config, 1300, 5_000))
        .await;
    assert_eq!(a.response()["extra"]["channelState"]["balance"], "15000");
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 2);
    // A top-up with a stale ceiling is corrected before any gas is spent, with the real balance.
    let a = f
        .send("/paid", &f.deposit_payload(&config, 1300, 5_000))
        .await;
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    let cs = &a.required()["accepts"][0]["extra"]["channelState"];
    assert_eq!(cs["balance"], "15000");
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_deposit_whose_voucher_would_be_refused_is_not_submitted() {
    let f = Fixture::new().await;
    let config = f.config(8);
    // Ceiling (the price) above balance + deposit.
    let a = f
        .send("/paid", &f.deposit_payload(&config, 1000, 500))
        .await;
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 0);
    assert!(f.engine.ledger().is_empty());
}

#[tokio::test]
async fn a_reverted_deposit_gives_a_clear_402_and_no_state() {
    let f = Fixture::new().await;
    let config = f.config(9);
    *f.chain.fail_deposit.lock() = Some(x402_upto::Reason::DepositTransactionFailed);
    let a = f
        .send("/paid", &f.deposit_payload(&config, 1000, 10_000))
        .await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_deposit_transaction_failed"
    );
    assert!(a.body["message"].as_str().unwrap().contains("reverted"));
    assert!(f.engine.ledger().is_empty());
    assert!(f.engine.store().load_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refund_returns_the_unspent_balance_without_running_the_handler() {
    let f = Fixture::new().await;
    let config = f.config(10);
    let id = f.fund(&config, 10_000);
    f.send("/paid?charge=700", &f.voucher_payload(&config, 1000))
        .await;
    let runs = f.handler_runs.load(Ordering::SeqCst);
    let a = f
        .send_ok("/paid", &f.refund_payload(&config, 700, None))
        .await;
    let r = a.response();
    assert_eq!(r["success"], true);
    assert_eq!(r["amount"], "9300");
    assert_eq!(
        r["transaction"],
        json!(alloy_primitives::B256::repeat_byte(0xef))
    );
    assert!(r["extra"].get("chargedAmount").is_none());
    let cs = &r["extra"]["channelState"];
    assert_eq!(cs["balance"], "700");
    assert_eq!(cs["totalClaimed"], "700");
    assert_eq!(cs["refundNonce"], "1");
    assert_eq!(cs["chargedCumulativeAmount"], "700");
    assert_eq!(f.handler_runs.load(Ordering::SeqCst), runs);
    assert!(f.engine.ledger().snapshot(&id).is_none());
    assert!(f.engine.store().load(id).await.unwrap().is_none());
}

#[tokio::test]
async fn a_partial_refund_keeps_the_channel() {
    let f = Fixture::new().await;
    let config = f.config(11);
    let id = f.fund(&config, 10_000);
    f.send("/paid?charge=100", &f.voucher_payload(&config, 1000))
        .await;
    let a = f
        .send_ok("/paid", &f.refund_payload(&config, 100, Some(4000)))
        .await;
    assert_eq!(a.response()["amount"], "4000");
    let s = f.engine.ledger().snapshot(&id).unwrap();
    assert_eq!((s.balance, s.charged), (6000, 100));
    let a = f.send("/paid", &f.voucher_payload(&config, 1100)).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn a_second_request_on_a_held_channel_is_busy() {
    let f = Fixture::new().await;
    let config = f.config(12);
    f.fund(&config, 10_000);
    f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    let id = f.id(&config);
    // Hold the channel the way an in-flight request does.
    let held = f
        .engine
        .ledger()
        .verify_and_reserve(
            x402_upto::verify::SignedVoucher {
                channel_id: id,
                max_claimable: 2000,
                signature: alloy_primitives::Bytes::from(
                    x402_upto::typed_data::sign_voucher(&f.payer, f.domain(), id, 2000)
                        .unwrap()
                        .as_bytes()
                        .to_vec(),
                ),
            },
            1000,
        )
        .unwrap();
    let a = f.send("/paid", &f.voucher_payload(&config, 2000)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_channel_busy");
    drop(held);
    let a = f.send("/paid", &f.voucher_payload(&config, 2000)).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn without_chain_access_an_unknown_channel_is_missing_and_a_failed_read_is_reported() {
    use std::sync::Arc;
    use x402_upto::engine::Engine;
    use x402_upto::server::PaymentLayer;

    let f = Fixture::new().await;
    let config = f.config(20);
    f.fund(&config, 10_000);
    *f.chain.fail_read.lock() = Some(x402_upto::Reason::RpcReadFailed);
    let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_rpc_read_failed");
    assert!(f.engine.ledger().is_empty());

    // The same engine configuration with no chain access at all.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        x402_upto::SledStore::open(
            dir.path(),
            x402_upto::SledOptions::with_durability(x402_upto::Durability::Group),
        )
        .unwrap(),
    );
    let engine = Engine::new(
        f.engine.config().clone(),
        x402_upto::Ledger::new(f.domain().clone()),
        store,
        None,
    )
    .unwrap();
    let app = axum::Router::new().route(
        "/paid",
        axum::routing::get(|| async { "x" }).layer(PaymentLayer::fixed(engine, 1000)),
    );
    let header = x402_upto::wire::encode_header(&f.voucher_payload(&config, 1000));
    let res = tower::ServiceExt::oneshot(
        app,
        http::Request::get("/paid")
            .header("payment-signature", header)
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), StatusCode::PAYMENT_REQUIRED);
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "invalid_batch_settlement_evm_missing_channel");
}

#[tokio::test]
async fn no_request_is_served_on_a_channel_while_its_refund_is_in_flight() {
    let f = std::sync::Arc::new(Fixture::new().await);
    let config = f.config(21);
    let id = f.fund(&config, 10_000);
    f.send("/paid?charge=100", &f.voucher_payload(&config, 1000))
        .await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    *f.chain.refund_gate.lock() = Some(gate.clone());
    let refund = {
        let f = f.clone();
        let p = f.refund_payload(&config, 100, None);
        tokio::spawn(async move { f.send("/paid", &p).await })
    };
    while f.chain.refunds.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let before = f.state().await;
    let a = f.send("/paid", &f.voucher_payload(&config, 1100)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{:?}", a.body);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_channel_busy");
    assert_eq!(f.state().await, before);
    gate.notify_one();
    let r = refund.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.response()["amount"], "9900");
    assert!(f.engine.ledger().snapshot(&id).is_none());
}

/// The client hangs up while the handler runs: the request still runs to the end on the
/// runtime, and what the handler charged becomes durable (the upstream work was done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_request_whose_client_hangs_up_still_finishes_and_is_charged() {
    use axum::routing::get;
    use axum::{Extension, Router};
    use std::sync::Arc;
    use std::time::Duration;
    use tower::ServiceExt;
    use x402_upto::server::{Charge, PaymentLayer};

    let f = Fixture::new().await;
    let config = f.config(9);
    let id = f.fund(&config, 10_000);
    let (entered, gate) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let (e, g) = (entered.clone(), gate.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(move |Extension(charge): Extension<Charge>| {
                let (e, g) = (e.clone(), g.clone());
                async move {
                    e.notify_one();
                    g.notified().await;
                    charge.set(300);
                    "done"
                }
            }),
        )
        .layer(PaymentLayer::fixed(f.engine.clone(), support::PRICE));
    let req = f.paid_request("/slow", &f.voucher_payload(&config, 1000));
    let mut call = Box::pin(app.oneshot(req));
    tokio::select! {
        _ = &mut call => panic!("answered before the handler was let go"),
        () = entered.notified() => {}
    }
    // The connection drops the request mid-handler, as hyper does when the client hangs up.
    drop(call);
    gate.notify_one();
    let charged = || {
        f.engine
            .ledger()
            .records()
            .into_iter()
            .find(|r| r.channel_id == id)
            .map(|r| r.charged)
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while charged() != Some(300) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the abandoned request was charged");
    // Durable, not only in memory.
    let stored = f.engine.store().load(id).await.unwrap().expect("stored");
    assert_eq!(stored.charged, 300);
}
