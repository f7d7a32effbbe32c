//! The facilitator's `/settle` refund action on anvil: the server-enriched refund payload
//! (stock SDK shape: `amount`, `refundNonce`, `claims`) claims the outstanding charge and
//! refunds the rest in one transaction; it is offered only to callers with the bearer token,
//! and a stale nonce, a foreign claim row or an empty channel are refused before any gas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::anvil_fixture::AnvilFixture;
use x402_upto_testkit::fixture as support;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};
use support::config_json;
use tower::ServiceExt;
use x402_upto::facilitator::Facilitator;

const TOKEN: &str = "refund-s3cret";

async fn post(
    app: &axum::Router,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_refund_claims_the_charge_and_refunds_the_rest_for_the_server_only() {
    let rig = AnvilFixture::start(1_000_000).await;
    let (net, f, _authorizer) = (&rig.net, &rig.f, &rig.authorizer);
    let payer = f.payer.clone();
    let app = Facilitator::new(
        rig.client.clone(),
        net.domain(),
        net.key(1).unwrap().address(),
    )
    .with_refund_token(TOKEN)
    .router();
    let requirements = serde_json::to_value(f.engine.offer(1000)).unwrap();
    let body = |p: &Value| json!({"x402Version": 2, "paymentPayload": p, "paymentRequirements": requirements});

    // A channel with 10,000 deposited through /settle.
    let cfg = f.config(1);
    let id = f.id(&cfg);
    let deposit = f.deposit_payload_with(&cfg, 1000, 10_000, rig.erc3009(&cfg, 10_000, 4));
    let (_, r) = post(&app, "/settle", None, body(&deposit)).await;
    assert_eq!(r["success"], true, "{r}");
    let after_deposit = net.balance_of(payer.address()).await.unwrap();
    assert_eq!(after_deposit, 1_000_000 - 10_000);

    // The server charged 700 under the payer's 1000 voucher; the payer asks for a refund
    // (zero-charge voucher at 700), and the server enriches it with the claim of those 700.
    let latest = f.voucher_json(&cfg, 1000);
    let enriched = |nonce: &str, claim_cfg: &Value, claim_sig: &Value| {
        let mut p = f.refund_payload(&cfg, 700, None);
        p["payload"]["refundNonce"] = json!(nonce);
        p["payload"]["claims"] = json!([{
            "voucher": {"channel": claim_cfg, "maxClaimableAmount": "1000"},
            "signature": claim_sig, "totalClaimed": "700"}]);
        p
    };
    let good = enriched("0", &config_json(&cfg), &latest["signature"]);

    // Only the resource server (bearer token) may ask.
    for bearer in [None, Some("wrong"), Some("refund-s3creT")] {
        let (status, r) = post(&app, "/settle", bearer, body(&good)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(r["success"], false);
        assert_eq!(
            r["errorReason"],
            "invalid_batch_settlement_evm_unknown_settle_action"
        );
    }
    // A stale nonce would revert: refused before sending.
    let (_, r) = post(
        &app,
        "/settle",
        Some(TOKEN),
        body(&enriched("1", &config_json(&cfg), &latest["signature"])),
    )
    .await;
    assert_eq!(
        r["errorReason"], "invalid_batch_settlement_evm_refund_simulation_failed",
        "{r}"
    );
    // A claim row for another channel (validly signed) is not this refund's.
    let other = f.config(2);
    let other_sig = f.voucher_json(&other, 1000)["signature"].clone();
    let foreign = enriched("0", &config_json(&other), &other_sig);
    let (_, r) = post(&app, "/settle", Some(TOKEN), body(&foreign)).await;
    assert_eq!(
        r["errorReason"], "invalid_batch_settlement_evm_refund_payload",
        "{r}"
    );
    // A claim above its voucher is refused.
    let mut above = good.clone();
    above["payload"]["claims"][0]["totalClaimed"] = json!("1001");
    let (_, r) = post(&app, "/settle", Some(TOKEN), body(&above)).await;
    assert_eq!(
        r["errorReason"], "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative",
        "{r}"
    );
    assert_eq!(
        net.balance_of(payer.address()).await.unwrap(),
        after_deposit
    );

    // The real one: claim 700 and refund 9,300 in one transaction.
    let (status, r) = post(&app, "/settle", Some(TOKEN), body(&good)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["amount"], "9300");
    assert_eq!(r["payer"], cfg.payer.to_checksum(None));
    assert!(r["transaction"].as_str().unwrap().starts_with("0x"));
    assert_eq!(
        r["extra"]["channelState"],
        json!({"channelId": id.0, "balance": "700", "totalClaimed": "700",
               "withdrawRequestedAt": 0, "refundNonce": "1"})
    );
    assert_eq!(
        net.balance_of(payer.address()).await.unwrap(),
        after_deposit + 9_300
    );

    // Nothing left: refused without a transaction.
    let mut again = f.refund_payload(&cfg, 700, None);
    again["payload"]["refundNonce"] = json!("1");
    again["payload"]["claims"] = json!([]);
    let (_, r) = post(&app, "/settle", Some(TOKEN), body(&again)).await;
    assert_eq!(
        r["errorReason"], "invalid_batch_settlement_evm_refund_no_balance",
        "{r}"
    );
}
