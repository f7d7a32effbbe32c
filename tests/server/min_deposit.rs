//! An advertised `extra.minDeposit` is enforced: a smaller deposit is refused with the stock
//! SDK's `…_deposit_below_min_deposit` before anything is sent (the relayer pays every
//! deposit's gas), nothing changes; a deposit at the minimum is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use alloy::signers::local::PrivateKeySigner;
use axum::http::StatusCode;
use serde_json::{Map, Value};
use support::{Fixture, MockChain, engine_config};
use x402_upto::engine::{ChainAccess, EngineConfig};
use x402_upto_testkit::offchain::domain;

#[tokio::test]
async fn a_deposit_below_the_advertised_minimum_is_refused_before_any_gas() {
    let chain = MockChain::shared();
    let mut extra = Map::new();
    extra.insert("minDeposit".into(), Value::String("5000".into()));
    let config = EngineConfig {
        extra,
        ..engine_config()
    };
    let access: Arc<dyn ChainAccess> = chain.clone();
    let f = Fixture::with(config, domain(), access, chain, PrivateKeySigner::random());
    let channel = f.config(1);

    let before = f.state().await;
    let a = f
        .send("/paid", &f.deposit_payload(&channel, 1000, 4999))
        .await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_deposit_below_min_deposit"
    );
    assert_eq!(a.required()["accepts"][0]["extra"]["minDeposit"], "5000");
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 0);
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 0);
    assert_eq!(f.state().await, before);

    f.send_ok("/paid", &f.deposit_payload(&channel, 1000, 5000))
        .await;
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 1);
}
