//! The facilitator endpoints on anvil: `/supported`, `/verify` (valid and forged vouchers),
//! `/settle` deposit → claim → settle, and a refused refund action.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::anvil_fixture::AnvilFixture;
use x402_upto_testkit::fixture as support;

use axum::body::Body;
use http::Request;
use serde_json::{Value, json};
use support::config_json;
use tower::ServiceExt;
use x402_upto::facilitator::Facilitator;

async fn call(app: &axum::Router, method: &str, path: &str, body: Value) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_settle_deposit_claim_and_sweep() {
    let rig = AnvilFixture::start(1_000_000).await;
    let (net, f, authorizer) = (&rig.net, &rig.f, &rig.authorizer);
    let app = Facilitator::new(
        rig.client.clone(),
        net.domain(),
        net.key(1).unwrap().address(),
    )
    .router();
    let requirements = serde_json::to_value(f.engine.offer(1000)).unwrap();
    let body = |p: &Value| json!({"x402Version": 2, "paymentPayload": p, "paymentRequirements": requirements});

    let s = call(&app, "GET", "/supported", Value::Null).await;
    assert_eq!(s["kinds"][0]["scheme"], "batch-settlement");
    assert_eq!(s["kinds"][0]["network"], "eip155:31337");
    assert_eq!(
        s["kinds"][0]["extra"]["receiverAuthorizer"],
        authorizer.address().to_checksum(None)
    );

    // Deposit through /settle with the payer's ERC-3009 authorization.
    let cfg = f.config(1);
    let id = f.id(&cfg);
    let deposit = f.deposit_payload_with(&cfg, 1000, 10_000, rig.erc3009(&cfg, 10_000, 4));
    let r = call(&app, "POST", "/verify", body(&deposit)).await;
    assert_eq!(r["isValid"], true, "{r}");
    let r = call(&app, "POST", "/settle", body(&deposit)).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["amount"], "10000");
    assert_eq!(r["extra"]["channelState"]["balance"], "10000");

    // /verify answers with the on-chain snapshot; a forged voucher is invalid.
    let voucher = f.voucher_payload(&cfg, 1000);
    let r = call(&app, "POST", "/verify", body(&voucher)).await;
    assert_eq!(r["isValid"], true, "{r}");
    assert_eq!(r["payer"], cfg.payer.to_checksum(None));
    assert_eq!(
        r["extra"],
        json!({"channelId": id.0, "balance": "10000", "totalClaimed": "0",
                                  "withdrawRequestedAt": 0, "refundNonce": "0"})
    );
    let mut forged = voucher.clone();
    forged["payload"]["voucher"]["maxClaimableAmount"] = json!("900");
    forged["accepted"] = requirements.clone();
    let r = call(&app, "POST", "/verify", body(&forged)).await;
    assert_eq!(r["isValid"], false);
    assert_eq!(
        r["invalidReason"],
        "invalid_batch_settlement_evm_voucher_signature"
    );
    let mut above = f.voucher_payload(&cfg, 20_000);
    above["accepted"] = requirements.clone();
    let r = call(&app, "POST", "/verify", body(&above)).await;
    assert_eq!(
        r["invalidReason"],
        "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    );

    // Claim 700 of the 1000 voucher, then sweep it to the receiver.
    let claim = json!({"x402Version": 2, "accepted": requirements, "payload": {"type": "claim", "claims": [{
        "voucher": {"channel": config_json(&cfg), "maxClaimableAmount": "1000"},
        "signature": voucher["payload"]["voucher"]["signature"], "totalClaimed": "700"}]}});
    let r = call(&app, "POST", "/settle", body(&claim)).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["amount"], "");
    let pay_to = f.engine.config().pay_to;
    let sweep = json!({"x402Version": 2, "accepted": requirements, "payload": {"type": "settle",
        "receiver": pay_to, "token": net.token}});
    let r = call(&app, "POST", "/settle", body(&sweep)).await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["amount"], "700");
    assert_eq!(net.balance_of(pay_to).await.unwrap(), 700);

    let refund = f.refund_payload(&cfg, 700, None);
    let r = call(&app, "POST", "/settle", body(&refund)).await;
    assert_eq!(r["success"], false);
    assert_eq!(
        r["errorReason"],
        "invalid_batch_settlement_evm_unknown_settle_action"
    );
}
