//! The request path refuses vouchers on a channel whose chain mirror is too old (neither
//! read directly nor covered by a watcher poll within `Freshness::max_age`): 402
//! `rpc_read_failed`, nothing held or charged; a successful poll makes it servable again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::time::Duration;

use axum::http::StatusCode;
use support::Fixture;
use x402_upto::settlement::{Freshness, unix_now};

#[tokio::test]
async fn a_stale_mirror_is_refused_until_the_watcher_polls_again() {
    let f = Fixture::new().await;
    let freshness = Freshness::new(Duration::from_secs(1));
    assert!(f.engine.set_freshness(freshness.clone()));
    assert!(
        !f.engine
            .set_freshness(Freshness::new(Duration::from_secs(5)))
    );
    let config = f.config(1);
    let id = f.fund(&config, 10_000);
    // Loaded from chain just now: fresh.
    f.send_ok("/paid", &f.voucher_payload(&config, 1000)).await;

    // No read and no poll for more than max_age (whole seconds): refused, nothing changes.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = f.state().await;
    let a = f.send("/paid", &f.voucher_payload(&config, 2000)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_rpc_read_failed");
    assert_eq!(f.state().await, before);
    assert!(!f.engine.ledger().is_held(&id));
    assert_eq!(f.handler_runs.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The watcher's successful poll covers every known channel: served again.
    freshness.mark(unix_now());
    f.send_ok("/paid", &f.voucher_payload(&config, 2000)).await;
}

#[tokio::test]
async fn without_a_freshness_policy_age_does_not_matter() {
    let f = Fixture::new().await;
    let config = f.config(1);
    f.fund(&config, 10_000);
    let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    f.send_ok("/paid", &f.voucher_payload(&config, 2000)).await;
}
