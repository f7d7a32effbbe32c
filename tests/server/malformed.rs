//! Every kind of bad `PAYMENT-SIGNATURE` gets the right status and reason code, the handler
//! does not run, and neither the ledger nor the store changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::atomic::Ordering;

use alloy_primitives::{Address, B256, Bytes, U256};
use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};
use support::{Fixture, config_json};
use x402_upto::OnchainState;
use x402_upto::typed_data::sign_voucher;
use x402_upto::verify::{SECP256K1_N, SignedVoucher};
use x402_upto::wire::encode_header;

type Mutate = Box<dyn Fn(&mut Value)>;

fn with(base: &Value, m: impl Fn(&mut Value)) -> String {
    let mut v = base.clone();
    m(&mut v);
    encode_header(&v)
}

#[tokio::test]
async fn malformed_and_hostile_payments_are_refused_without_any_state_change() {
    let f = Fixture::new().await;
    let ledger = f.engine.ledger().clone();

    // Channel A: funded, one paid request (charged 400, last ceiling 1000).
    let a = f.config(1);
    let a_id = f.fund(&a, 10_000);
    let r = f
        .send("/paid?charge=400", &f.voucher_payload(&a, 1000))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Channel B: known, balance below the price.
    let b = f.config(2);
    ledger.upsert_from_chain(
        b.clone(),
        OnchainState {
            balance: 500,
            ..Default::default()
        },
        0,
    );
    // Channel C: known, a timed withdrawal pending.
    let c = f.config(3);
    let state = OnchainState {
        balance: 5000,
        withdraw_requested_at: 1_700_000_000,
        ..Default::default()
    };
    ledger.upsert_from_chain(c.clone(), state, 0);
    // Channel D: fully spent (charged == balance).
    let d = f.config(4);
    f.fund(&d, 1000);
    let r = f.send("/paid", &f.voucher_payload(&d, 1000)).await;
    assert_eq!(r.status, StatusCode::OK);
    // Channel E: a smart-wallet payer (payerAuthorizer zero) that approves nothing; the
    // voucher below is an ECDSA signature by someone else, so ERC-1271 decides (false).
    let mut e = f.config(5);
    e.payer = Address::repeat_byte(0x99);
    e.payerAuthorizer = Address::ZERO;
    ledger.upsert_from_chain(
        e.clone(),
        OnchainState {
            balance: 5000,
            ..Default::default()
        },
        0,
    );
    // Channel H: held by an in-flight request.
    let h = f.config(6);
    let h_id = f.fund(&h, 5000);
    ledger.upsert_from_chain(
        h.clone(),
        OnchainState {
            balance: 5000,
            ..Default::default()
        },
        0,
    );
    let sig = sign_voucher(&f.payer, f.domain(), h_id, 1000).unwrap();
    let _held = ledger
        .verify_and_reserve(
            SignedVoucher {
                channel_id: h_id,
                max_claimable: 1000,
                signature: Bytes::from(sig.as_bytes().to_vec()),
            },
            1000,
        )
        .unwrap();

    let good = f.voucher_payload(&a, 1400);
    let sig_hex = good["payload"]["voucher"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig_bytes = hex::decode(&sig_hex[2..]).unwrap();

    // High-s twin of the good signature: s' = n - s, parity flipped; same signer.
    let s = U256::from_be_slice(&sig_bytes[32..64]);
    let mut high = sig_bytes.clone();
    high[32..64].copy_from_slice(&(SECP256K1_N - s).to_be_bytes::<32>());
    high[64] = if sig_bytes[64] == 27 { 28 } else { 27 };
    let forged = {
        let other = alloy::signers::local::PrivateKeySigner::random();
        let s = sign_voucher(&other, f.domain(), a_id, 1400).unwrap();
        format!("0x{}", hex::encode(s.as_bytes()))
    };
    let other_amount = {
        let s = sign_voucher(&f.payer, f.domain(), a_id, 2000).unwrap();
        format!("0x{}", hex::encode(s.as_bytes()))
    };
    let mut bad_v = sig_bytes.clone();
    bad_v[64] = 5;

    let set = |path: &'static str, v: Value| -> Mutate {
        Box::new(move |p: &mut Value| {
            let mut cur = p;
            let parts: Vec<&str> = path.split('/').collect();
            for k in &parts[..parts.len() - 1] {
                cur = &mut cur[*k];
            }
            cur[parts[parts.len() - 1]] = v.clone();
        })
    };
    let remove = |path: &'static str| -> Mutate {
        Box::new(move |p: &mut Value| {
            let parts: Vec<&str> = path.split('/').collect();
            let mut cur = p;
            for k in &parts[..parts.len() - 1] {
                cur = &mut cur[*k];
            }
            cur.as_object_mut().unwrap().remove(parts[parts.len() - 1]);
        })
    };

    let std_b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // '?' bytes and '~' bytes encode to '/' and '+' in the standard alphabet.
    let mut noted = good.clone();
    noted["note"] = json!("???>>>~~~");
    let url_safe =
        base64::engine::general_purpose::URL_SAFE.encode(serde_json::to_vec(&noted).unwrap());
    assert!(url_safe.contains('-') || url_safe.contains('_'));

    let refund_a = f.refund_payload(&a, 400, None);
    let mut deposit_a = f.deposit_payload(&a, 1400, 5000);
    deposit_a["payload"]["deposit"]["authorization"] = json!({});
    let deposit_zero = f.deposit_payload(&a, 1400, 0);
    let deposit_ok = f.deposit_payload(&a, 1400, 5000);
    let unknown = f.config(9);

    let p402 = StatusCode::PAYMENT_REQUIRED;
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("not base64", "!!!not-base64!!!".into(), p402, "invalid_payload"),
        ("url-safe base64", url_safe, p402, "invalid_payload"),
        ("empty header", String::new(), p402, "invalid_payload"),
        ("base64 of non-JSON", std_b64("not json"), p402, "invalid_payload"),
        ("JSON array", std_b64("[1,2]"), p402, "invalid_payload"),
        ("truncated JSON", std_b64(&serde_json::to_string(&good).unwrap()[..200]), p402, "invalid_payload"),
        ("oversized header", "A".repeat(17 * 1024), p402, "invalid_payload"),
        ("x402Version 1", with(&good, set("x402Version", json!(1))), p402, "invalid_x402_version"),
        ("x402Version as string", with(&good, set("x402Version", json!("2"))), p402, "invalid_x402_version"),
        ("x402Version missing", with(&good, remove("x402Version")), p402, "invalid_x402_version"),
        ("accepted missing", with(&good, remove("accepted")), p402, "invalid_payload"),
        ("scheme exact", with(&good, set("accepted/scheme", json!("exact"))), p402, "invalid_scheme"),
        ("scheme upto", with(&good, set("accepted/scheme", json!("upto"))), p402, "invalid_scheme"),
        ("wrong chain", with(&good, set("accepted/network", json!("eip155:8453"))), p402, "invalid_batch_settlement_evm_network_mismatch"),
        ("not eip155", with(&good, set("accepted/network", json!("solana:mainnet"))), p402, "invalid_batch_settlement_evm_network_mismatch"),
        ("accepted amount lowered", with(&good, set("accepted/amount", json!("999"))), p402, "invalid_payment_requirements"),
        ("accepted payTo changed", with(&good, set("accepted/payTo", json!(Address::repeat_byte(1)))), p402, "invalid_payment_requirements"),
        ("accepted asset changed", with(&good, set("accepted/asset", json!(Address::repeat_byte(1)))), p402, "invalid_payment_requirements"),
        ("accepted extra dropped", with(&good, remove("accepted/extra/withdrawDelay")), p402, "invalid_payment_requirements"),
        ("payload type claim", with(&good, set("payload/type", json!("claim"))), p402, "invalid_batch_settlement_evm_payload_type"),
        ("payload type missing", with(&good, remove("payload/type")), p402, "invalid_batch_settlement_evm_payload_type"),
        ("voucher signature missing", with(&good, remove("payload/voucher/signature")), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("negative amount", with(&good, set("payload/voucher/maxClaimableAmount", json!("-1"))), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("hex amount", with(&good, set("payload/voucher/maxClaimableAmount", json!("0x578"))), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("amount above uint128", with(&good, set("payload/voucher/maxClaimableAmount", json!("340282366920938463463374607431768211456"))), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("config missing", with(&good, remove("payload/channelConfig")), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("wrong receiver", with(&good, set("payload/channelConfig/receiver", json!(Address::repeat_byte(1)))), p402, "invalid_batch_settlement_evm_receiver_mismatch"),
        ("wrong token", with(&good, set("payload/channelConfig/token", json!(Address::repeat_byte(1)))), p402, "invalid_batch_settlement_evm_token_mismatch"),
        ("wrong receiverAuthorizer", with(&good, set("payload/channelConfig/receiverAuthorizer", json!(Address::repeat_byte(1)))), p402, "invalid_batch_settlement_evm_receiver_authorizer_mismatch"),
        ("wrong withdrawDelay", with(&good, set("payload/channelConfig/withdrawDelay", json!(901))), p402, "invalid_batch_settlement_evm_withdraw_delay_mismatch"),
        ("channelId not the config hash", with(&good, set("payload/voucher/channelId", json!(B256::repeat_byte(7)))), p402, "invalid_batch_settlement_evm_channel_id_mismatch"),
        ("salt changed (other contract/channel)", with(&good, set("payload/channelConfig/salt", json!(B256::repeat_byte(8)))), p402, "invalid_batch_settlement_evm_channel_id_mismatch"),
        ("replayed voucher", encode_header(&f.voucher_payload(&a, 1000)), p402, "invalid_batch_settlement_evm_cumulative_amount_mismatch"),
        ("ceiling too high", encode_header(&f.voucher_payload(&a, 1401)), p402, "invalid_batch_settlement_evm_cumulative_amount_mismatch"),
        ("forged signature", with(&good, set("payload/voucher/signature", json!(forged))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("high-s signature", with(&good, set("payload/voucher/signature", json!(format!("0x{}", hex::encode(&high))))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("recovery byte 5", with(&good, set("payload/voucher/signature", json!(format!("0x{}", hex::encode(&bad_v))))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("64-byte signature", with(&good, set("payload/voucher/signature", json!(format!("0x{}", hex::encode(&sig_bytes[..64]))))), p402, "invalid_batch_settlement_evm_voucher_payload"),
        ("signature over another amount", with(&good, set("payload/voucher/signature", json!(other_amount))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("unknown channel", encode_header(&f.voucher_payload(&unknown, 1000)), p402, "invalid_batch_settlement_evm_channel_not_found"),
        ("insufficient balance", encode_header(&f.voucher_payload(&b, 1000)), p402, "invalid_batch_settlement_evm_cumulative_exceeds_balance"),
        ("withdrawal pending", encode_header(&f.voucher_payload(&c, 1000)), p402, "invalid_batch_settlement_evm_cumulative_exceeds_balance"),
        ("smart-wallet channel, wallet does not approve", encode_header(&f.payload(1000, json!({"type": "voucher", "channelConfig": config_json(&e), "voucher": f.voucher_json(&e, 1000)}))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("channel busy", encode_header(&f.voucher_payload(&h, 1000)), p402, "invalid_batch_settlement_evm_channel_busy"),
        ("deposit without an ERC-3009 authorization", encode_header(&deposit_a), p402, "invalid_batch_settlement_evm_erc3009_authorization_required"),
        ("ERC-3009 authorization expired", with(&deposit_ok, set("payload/deposit/authorization/erc3009Authorization/validBefore", json!("1"))), p402, "invalid_batch_settlement_evm_payload_authorization_valid_before"),
        ("ERC-3009 authorization not yet valid", with(&deposit_ok, set("payload/deposit/authorization/erc3009Authorization/validAfter", json!("99999999998"))), p402, "invalid_batch_settlement_evm_payload_authorization_valid_after"),
        ("deposit with a forged voucher", with(&deposit_ok, set("payload/voucher/signature", json!(forged))), p402, "invalid_batch_settlement_evm_voucher_signature"),
        ("zero deposit", encode_header(&deposit_zero), p402, "invalid_batch_settlement_evm_deposit_payload"),
        ("deposit without deposit", with(&deposit_zero, remove("payload/deposit")), p402, "invalid_batch_settlement_evm_deposit_payload"),
        ("refund amount zero", with(&refund_a, set("payload/amount", json!("0"))), p402, "invalid_batch_settlement_evm_refund_amount_invalid"),
        ("refund amount not a number", with(&refund_a, set("payload/amount", json!("ten"))), p402, "invalid_batch_settlement_evm_refund_payload"),
        ("refund above the unspent balance", with(&refund_a, set("payload/amount", json!("9601"))), p402, "invalid_batch_settlement_evm_refund_amount_invalid"),
        ("refund voucher that charges", encode_header(&f.refund_payload(&a, 1400, None)), p402, "invalid_batch_settlement_evm_cumulative_amount_mismatch"),
        ("refund of a spent channel", encode_header(&f.refund_payload(&d, 1000, None)), p402, "invalid_batch_settlement_evm_refund_no_balance"),
    ];
    assert!(cases.len() >= 25);

    for (name, header, status, reason) in cases {
        let before = f.state().await;
        let runs = f.handler_runs.load(Ordering::SeqCst);
        let reads = f.chain.reads.load(Ordering::SeqCst);
        let answer = f.send_raw("/paid", Some(header)).await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.body);
        assert_eq!(answer.reason(), reason, "{name}");
        assert_eq!(answer.body["error"], reason, "{name}: body says the same");
        assert!(answer.headers.get("payment-response").is_none(), "{name}");
        assert_eq!(
            f.handler_runs.load(Ordering::SeqCst),
            runs,
            "{name}: handler ran"
        );
        assert_eq!(f.state().await, before, "{name}: state changed");
        assert!(!ledger.is_held(&a_id), "{name}: channel left held");
        // Only an unknown channel may cost a chain read.
        if name != "unknown channel" {
            assert_eq!(
                f.chain.reads.load(Ordering::SeqCst),
                reads,
                "{name}: chain read"
            );
        }
    }

    // A charge above the maximum from the handler: 500, nothing charged.
    let before = f.state().await;
    let answer = f.send("/paid?charge=1001", &good).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        answer.settle().error_reason.as_deref(),
        Some("invalid_batch_settlement_evm_charge_exceeds_signed_cumulative")
    );
    assert_eq!(f.state().await, before);
    // A reverted deposit: 402, no state.
    *f.chain.fail_deposit.lock() = Some(x402_upto::Reason::DepositTransactionFailed);
    let answer = f.send("/paid", &f.deposit_payload(&a, 1400, 5000)).await;
    assert_eq!(
        answer.reason(),
        "invalid_batch_settlement_evm_deposit_transaction_failed"
    );
    assert_eq!(f.state().await, before);
    // And the good voucher still pays afterwards.
    let answer = f.send("/paid", &good).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 0);
    assert_eq!(f.chain.refunds.load(Ordering::SeqCst), 0);
}
