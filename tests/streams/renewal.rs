//! Metered streams renewed mid-stream (`docs/protocol.md` §10), on the in-process server
//! fixture with the chain double: renewals extend the budget and checkpoint the charge
//! durably, bad renewals change nothing, a stream that is not renewed stops at its budget,
//! a client leaving mid-stream pays what was delivered, and `PayingClient::stream` does it
//! all end to end over TCP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use base64::Engine as _;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use support::{Answer, Fixture, PRICE};

use crate::metered::{PER_TOKEN, gpu};
use tower::ServiceExt as _;
use x402_upto::client::{ClientConfig, PayingClient, StreamEvent};
use x402_upto::engine::{Engine, EngineConfig};
use x402_upto::server::{PaymentLayer, STREAM_ID_HEADER};
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain, sign_voucher};
use x402_upto::verify::recover_signer;
use x402_upto::wire::encode_header;
use x402_upto::{Durability, Ledger, SledOptions, SledStore, Store};

/// The fixture's app plus the metered `/gpu` route.
async fn rig() -> Fixture {
    let mut f = Fixture::new().await;
    let layer = PaymentLayer::fixed(f.engine.clone(), PRICE).streaming();
    f.app = f.app.clone().route("/gpu", get(gpu).layer(layer));
    f
}

/// An open streamed response read event by event.
struct Sse {
    body: Body,
    buf: String,
    stream_id: String,
}

impl Sse {
    async fn open(f: &Fixture, path: &str, payload: &Value) -> Self {
        let req = Request::get(path)
            .header("host", "localhost")
            .header("PAYMENT-SIGNATURE", encode_header(payload))
            .body(Body::empty())
            .unwrap();
        let res = f.app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        assert!(res.headers().get("payment-response").is_none());
        let stream_id = res.headers()[STREAM_ID_HEADER].to_str().unwrap().to_owned();
        Self {
            body: res.into_body(),
            buf: String::new(),
            stream_id,
        }
    }

    /// The next `(event, data)`, `None` at the end of the body.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event: ") {
                        event = e.to_owned();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data = d.to_owned();
                    }
                }
                return Some((event, data));
            }
            let frame = self.body.frame().await?.unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// Reads up to the next `payment-renewal` event; returns its JSON and the token count.
    async fn until_renewal(&mut self) -> (Value, usize) {
        let mut tokens = 0;
        while let Some((event, data)) = self.next().await {
            match event.as_str() {
                "token" => tokens += 1,
                "payment-renewal" => return (serde_json::from_str(&data).unwrap(), tokens),
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        panic!("the stream ended without a renewal event");
    }

    /// Reads to the end; returns the tokens, the renewal events and the final settlement.
    async fn finish(&mut self) -> (usize, Vec<Value>, Value) {
        let (mut tokens, mut renewals, mut last) = (0, Vec::new(), None);
        while let Some((event, data)) = self.next().await {
            match event.as_str() {
                "token" => tokens += 1,
                "payment-renewal" => renewals.push(serde_json::from_str(&data).unwrap()),
                "payment-response" => last = Some(b64(&data)),
                other => panic!("unexpected event {other}: {data}"),
            }
        }
        (
            tokens,
            renewals,
            last.expect("a final payment-response event"),
        )
    }
}

fn b64(v: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Sends a renewal for `stream_id` to `/gpu`.
async fn renew(f: &Fixture, stream_id: &str, payload: Option<&Value>) -> Answer {
    let mut req = Request::get("/gpu?tokens=0")
        .header("host", "localhost")
        .header(STREAM_ID_HEADER, stream_id);
    if let Some(p) = payload {
        req = req.header("PAYMENT-SIGNATURE", encode_header(p));
    }
    f.send_request(req).await
}

/// Sends a renewal for `stream_id` with the voucher of `config` for `max`.
async fn renew_to(f: &Fixture, stream_id: &str, config: &ChannelConfig, max: u128) -> Answer {
    renew(f, stream_id, Some(&f.voucher_payload(config, max))).await
}

/// A channel (`salt`) funded with `balance`, and a stream on `path` opened with its first
/// voucher (1000, one budget).
async fn open_stream(
    f: &Fixture,
    salt: u8,
    balance: u128,
    path: &str,
) -> (ChannelConfig, ChannelId, Sse) {
    let config = f.config(salt);
    let id = f.fund(&config, balance);
    let sse = Sse::open(f, path, &f.voucher_payload(&config, 1000)).await;
    (config, id, sse)
}

/// `open_stream` on 25 tokens with a grace period of `grace_ms`, read up to the first
/// renewal event (its budget 75% used).
async fn at_first_renewal(
    f: &Fixture,
    salt: u8,
    balance: u128,
    grace_ms: u64,
) -> (ChannelConfig, ChannelId, Sse) {
    let path = format!("/gpu?tokens=25&grace_ms={grace_ms}");
    let (config, id, mut sse) = open_stream(f, salt, balance, &path).await;
    sse.until_renewal().await;
    (config, id, sse)
}

/// A client paying the fixture from its payer (contracts at the chain double's addresses).
fn paying_client(f: &Fixture) -> PayingClient {
    PayingClient::new(
        ClientConfig::new(f.payer.clone())
            .with_contracts(Address::repeat_byte(0xee), Address::repeat_byte(0xcc)),
    )
}

fn amount(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

/// The `chargedAmount` a `payment-response` settled.
fn charged(response: &Value) -> u128 {
    amount(&response["extra"]["chargedAmount"])
}

#[tokio::test]
async fn a_renewed_stream_delivers_more_than_one_budget_and_charges_exactly_what_it_delivered() {
    let f = rig().await;
    let (config, id, mut sse) = open_stream(&f, 1, 10_000, "/gpu?tokens=25&grace_ms=2000").await;

    // 75% of the first budget used: the server asks for the next voucher.
    let (event, tokens) = sse.until_renewal().await;
    assert_eq!(tokens, 8);
    assert_eq!(event["streamId"], sse.stream_id.as_str());
    assert_eq!(event["channelId"], json!(id.0));
    assert_eq!(amount(&event["maxClaimableAmount"]), 1000);
    assert_eq!(amount(&event["chargedAmount"]), 800);
    assert_eq!(amount(&event["chargedCumulativeAmount"]), 800);
    assert_eq!(amount(&event["amount"]), PRICE);
    println!("renewal event: {event}");
    let a = renew_to(&f, &sse.stream_id, &config, 2000).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let r = a.response();
    println!("renewal PAYMENT-RESPONSE: {r}");
    assert_eq!(r, a.body, "the body repeats the header");
    assert_eq!(r["success"], true);
    assert_eq!(charged(&r), 800);
    assert_eq!(
        amount(&r["extra"]["channelState"]["chargedCumulativeAmount"]),
        800
    );
    // Checkpointed: durable before the answer, with the new voucher, while the stream runs.
    let stored = f.engine.store().load(id).await.unwrap().unwrap();
    assert_eq!((stored.charged, stored.signed_max_claimable), (800, 2000));
    assert!(
        f.engine.ledger().is_held(&id),
        "the stream still holds the channel"
    );

    let (event, tokens) = sse.until_renewal().await;
    assert_eq!(
        tokens, 10,
        "18 tokens in all: the second budget is 75% used"
    );
    assert_eq!(amount(&event["maxClaimableAmount"]), 2000);
    assert_eq!(amount(&event["chargedAmount"]), 1800);
    let a = renew_to(&f, &sse.stream_id, &config, 3000).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(charged(&a.response()), 1800);

    let (tokens, renewals, last) = sse.finish().await;
    assert_eq!(tokens, 7, "25 tokens in all, more than two budgets");
    assert!(
        renewals.is_empty(),
        "2500 of 3000 used: below the renewal mark"
    );
    println!("final payment-response: {last}");
    assert_eq!(last["success"], true);
    assert_eq!(charged(&last), 2500);
    assert_eq!(
        amount(&last["extra"]["channelState"]["chargedCumulativeAmount"]),
        2500
    );
    let record = f.engine.ledger().record(&id).unwrap();
    assert_eq!((record.charged, record.signed_max_claimable), (2500, 3000));
    let stored = f.engine.store().load(id).await.unwrap().unwrap();
    assert_eq!(stored, record);
    assert!(!f.engine.ledger().is_held(&id));
    // The stream is over: its id is no longer renewable.
    let a = renew_to(&f, &sse.stream_id, &config, 4000).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body["error"], "stream_not_found");
    // The next request continues from the stream's charge.
    let a = f
        .send("/paid?charge=10", &f.voucher_payload(&config, 3500))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(f.engine.ledger().record(&id).unwrap().charged, 2510);
}

#[tokio::test]
async fn a_stream_that_is_not_renewed_stops_at_its_budget() {
    let f = rig().await;
    // Without a grace period the handler stops as soon as the budget is used up.
    let (config, id, mut sse) = open_stream(&f, 2, 10_000, "/gpu?tokens=25").await;
    let (tokens, renewals, last) = sse.finish().await;
    assert_eq!(tokens, 10);
    assert_eq!(renewals.len(), 1, "asked once, never answered");
    assert_eq!(charged(&last), 1000);
    // With a grace period the handler waits for a renewal that never comes, then stops.
    let started = std::time::Instant::now();
    let mut sse = Sse::open(
        &f,
        "/gpu?tokens=25&grace_ms=150",
        &f.voucher_payload(&config, 2000),
    )
    .await;
    let (tokens, _, last) = sse.finish().await;
    assert_eq!(tokens, 10);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(charged(&last), 1000);
    let record = f.engine.ledger().record(&id).unwrap();
    assert_eq!((record.charged, record.signed_max_claimable), (2000, 2000));
}

/// Asserts a refused renewal: the status, the reason, and no state change at all.
async fn refused(f: &Fixture, stream_id: &str, payload: Option<&Value>, reason: &str) -> Answer {
    let before = f.state().await;
    let a = renew(f, stream_id, payload).await;
    assert_eq!(
        a.status,
        StatusCode::PAYMENT_REQUIRED,
        "{reason}: {:?}",
        a.body
    );
    assert_eq!(a.required()["error"].as_str().unwrap_or("none"), reason);
    assert!(a.headers.get("payment-response").is_none());
    assert_eq!(f.state().await, before, "{reason} changed the state");
    a
}

/// [`refused`] for the payer's voucher at `max` on `config`.
async fn refused_voucher(
    f: &Fixture,
    stream_id: &str,
    config: &ChannelConfig,
    max: u128,
    reason: &str,
) -> Answer {
    refused(f, stream_id, Some(&f.voucher_payload(config, max)), reason).await
}

#[tokio::test]
async fn bad_renewals_are_refused_with_the_spec_reason_and_change_nothing() {
    let f = rig().await;
    let other = f.config(4);
    f.fund(&other, 10_000);
    let (config, id, mut sse) = open_stream(&f, 3, 10_000, "/gpu?tokens=25&grace_ms=50").await;
    let (_, tokens) = sse.until_renewal().await;
    assert_eq!(tokens, 8);
    let sid = sse.stream_id.clone();

    // Wrong amount (not held ceiling + price): a corrective 402 proving the held voucher.
    let a = refused_voucher(
        &f,
        &sid,
        &config,
        2500,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    )
    .await;
    let extra = &a.required()["accepts"][0]["extra"];
    assert_eq!(amount(&extra["voucherState"]["signedMaxClaimable"]), 1000);
    let sig = hex::decode(
        extra["voucherState"]["signature"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
    )
    .unwrap();
    let digest = f.domain().voucher_digest(id, 1000);
    assert_eq!(recover_signer(&digest, &sig).unwrap(), f.payer.address());
    // Replay of the voucher the stream already holds: not strictly increasing.
    refused_voucher(
        &f,
        &sid,
        &config,
        1000,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    )
    .await;
    // Signed by someone else.
    let mut forged = f.voucher_payload(&config, 2000);
    let stranger = PrivateKeySigner::random();
    let sig = sign_voucher(&stranger, f.domain(), id, 2000).unwrap();
    forged["payload"]["voucher"]["signature"] = json!(format!("0x{}", hex::encode(sig.as_bytes())));
    refused(
        &f,
        &sid,
        Some(&forged),
        "invalid_batch_settlement_evm_voucher_signature",
    )
    .await;
    // A valid voucher for another channel of the same payer.
    refused_voucher(
        &f,
        &sid,
        &other,
        1000,
        "invalid_batch_settlement_evm_channel_id_mismatch",
    )
    .await;
    // A deposit is not a renewal.
    refused(
        &f,
        &sid,
        Some(&f.deposit_payload(&config, 2000, 5000)),
        "invalid_batch_settlement_evm_payload_type",
    )
    .await;
    // Garbage and a missing payment.
    let before = f.state().await;
    let a = renew(&f, &sid, None).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.required()["error"], json!("Payment required"));
    assert_eq!(a.required()["accepts"][0]["amount"], "1000");
    assert_eq!(f.state().await, before);
    let mut priced = f.voucher_payload(&config, 2000);
    priced["accepted"] = serde_json::to_value(f.engine.offer(2 * PRICE)).unwrap();
    refused(&f, &sid, Some(&priced), "invalid_payment_requirements").await;
    // An unknown stream id: 404, nothing to do with the payment.
    let before = f.state().await;
    let a = renew(
        &f,
        "00112233445566778899aabbccddeeff",
        Some(&f.voucher_payload(&config, 2000)),
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.body["error"], "stream_not_found");
    assert!(a.headers.get("payment-required").is_none());
    assert_eq!(f.state().await, before);

    // None of that disturbed the stream: the right voucher still renews it.
    let a = renew_to(&f, &sid, &config, 2000).await;
    assert_eq!(a.status, StatusCode::OK);
    // ...and the voucher it replaced is now a replay.
    refused_voucher(
        &f,
        &sid,
        &config,
        2000,
        "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    )
    .await;
    let (tokens, _, last) = sse.finish().await;
    assert_eq!(
        tokens, 12,
        "the second budget, then no renewal within the grace period"
    );
    assert_eq!(charged(&last), 2000);
}

#[tokio::test]
async fn renewals_over_the_balance_or_during_a_withdrawal_are_refused() {
    let f = rig().await;
    const OVER_BALANCE: &str = "invalid_batch_settlement_evm_cumulative_exceeds_balance";
    let (config, id, mut sse) = at_first_renewal(&f, 5, 1500, 100).await;
    refused_voucher(&f, &sse.stream_id, &config, 2000, OVER_BALANCE).await;
    // The payer tops up on chain, then starts a timed withdrawal: still no renewal.
    let mut onchain = x402_upto::ledger::OnchainState {
        balance: 5000,
        ..Default::default()
    };
    f.engine.ledger().refresh(&id, onchain, 1).unwrap();
    onchain.withdraw_requested_at = 1_700_000_000;
    f.engine.ledger().refresh(&id, onchain, 2).unwrap();
    refused_voucher(&f, &sse.stream_id, &config, 2000, OVER_BALANCE).await;
    let (tokens, _, last) = sse.finish().await;
    assert_eq!(tokens, 2, "the stream ends at its one budget");
    assert_eq!(charged(&last), 1000);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_checkpoint_survives_a_crash_mid_stream() {
    let f = rig().await;
    let (config, id, mut sse) = at_first_renewal(&f, 6, 10_000, 50).await;
    let a = renew_to(&f, &sse.stream_id, &config, 2000).await;
    assert_eq!(a.status, StatusCode::OK);
    // The disk as a crash right now would leave it: the stream is live, nothing settled.
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(f.dir.path(), crashed.path());

    let store = std::sync::Arc::new(
        SledStore::open(
            crashed.path(),
            SledOptions::with_durability(Durability::Group),
        )
        .unwrap(),
    );
    let domain = EscrowDomain::new(31337, Address::repeat_byte(0xee));
    let config_e: EngineConfig = support::engine_config();
    let engine = Engine::new(config_e, Ledger::new(domain), store, None).unwrap();
    assert_eq!(engine.restore().await.unwrap(), 1);
    let record = engine.ledger().record(&id).unwrap();
    assert_eq!((record.charged, record.signed_max_claimable), (800, 2000));
    let digest = f.domain().voucher_digest(id, 2000);
    assert_eq!(
        recover_signer(&digest, &record.signature).unwrap(),
        f.payer.address()
    );
    // What the restarted server can claim: the checkpointed charge, under the new voucher.
    let claims = engine.ledger().claimable();
    assert_eq!(claims.len(), 1);
    assert_eq!(
        (claims[0].claim_total, claims[0].max_claimable),
        (800, 2000)
    );
    // Meanwhile the original stream finishes normally.
    let (_, _, last) = sse.finish().await;
    assert_eq!(charged(&last), 2000);
}

#[tokio::test]
async fn a_client_leaving_after_a_renewal_pays_what_was_delivered() {
    let f = rig().await;
    let (config, id, mut sse) = at_first_renewal(&f, 7, 10_000, 2000).await;
    let sid = sse.stream_id.clone();
    let a = renew_to(&f, &sid, &config, 2000).await;
    assert_eq!(a.status, StatusCode::OK);
    for _ in 0..4 {
        assert_eq!(sse.next().await.unwrap().0, "token");
    }
    drop(sse);
    // Settled in the background: 12 tokens delivered.
    for _ in 0..200 {
        if !f.engine.ledger().is_held(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!f.engine.ledger().is_held(&id));
    let stored = f.engine.store().load(id).await.unwrap().unwrap();
    assert_eq!((stored.charged, stored.signed_max_claimable), (1200, 2000));
    let a = renew_to(&f, &sid, &config, 3000).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

/// The fixture served over TCP, and a client paying it from `payer` (its channel is
/// opened with a deposit through the chain double).
async fn served(f: &Fixture) -> (String, PayingClient) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let app = f.app.clone();
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (base, paying_client(f))
}

fn client_channel(f: &Fixture) -> ChannelConfig {
    let mut c = f.config(0);
    c.salt = Default::default();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_client_streams_and_renews_end_to_end() {
    let f = rig().await;
    let (base, client) = served(&f).await;
    let mut s = client
        .stream(&format!("{base}/gpu?tokens=25&grace_ms=2000"), 5000)
        .await
        .unwrap();
    assert!(s.stream_id().is_some());
    let (mut tokens, mut renewed, mut last) = (0, Vec::new(), None);
    loop {
        let t = std::time::Instant::now();
        let Some(ev) = s.next().await else { break };
        match ev.unwrap() {
            StreamEvent::Data { event, .. } => {
                assert_eq!(event, "token");
                tokens += 1;
            }
            StreamEvent::Renewed(r) => {
                // Sign, send, verify, checkpoint durably (sled, group commit), answer.
                println!("renewal round trip: {:?}", t.elapsed());
                renewed.push(r.extra.unwrap().charged_amount.unwrap());
            }
            StreamEvent::RenewalSkipped { reason } => panic!("skipped: {reason}"),
            StreamEvent::Settled(r) => last = Some(r),
        }
    }
    assert_eq!(tokens, 25);
    // Checkpoints as seen by the client (the server may have metered a little further
    // than the event while the client signed; never less).
    assert_eq!(renewed.len(), 2);
    assert!(
        renewed[0] >= 800 && renewed[1] >= 1800 && renewed[1] <= 2000,
        "{renewed:?}"
    );
    let last = last.unwrap();
    assert_eq!(last.extra.as_ref().unwrap().charged_amount, Some(2500));
    assert_eq!(last.amount.as_deref(), Some("10000"), "the opening deposit");
    assert_eq!((s.charged(), s.authorized()), (2500, 3000));
    let ch = &client.channels()[0];
    assert_eq!(
        (ch.charged, ch.signed_max, ch.deposited, ch.balance),
        (2500, 3000, 10_000, 10_000)
    );
    let id = f.id(&client_channel(&f));
    assert_eq!(ch.channel_id, id);
    assert_eq!(
        f.engine.store().load(id).await.unwrap().unwrap().charged,
        2500
    );
    // A plain request afterwards continues from the stream's cumulative.
    let a = client.get(&format!("{base}/paid?charge=7")).await.unwrap();
    assert_eq!(a.charged(), Some(7));
    assert_eq!(client.channels()[0].charged, 2507);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_client_stops_renewing_at_max_total() {
    let f = rig().await;
    let (base, client) = served(&f).await;
    let mut s = client
        .stream(&format!("{base}/gpu?tokens=25&grace_ms=100"), 2500)
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(ev) = s.next().await {
        events.push(ev.unwrap());
    }
    let tokens = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::Data { .. }))
        .count();
    assert_eq!(tokens, 20, "two budgets: 2000 <= 2500 < 3000");
    assert!(events.iter().any(
        |e| matches!(e, StreamEvent::RenewalSkipped { reason } if reason == "max_total reached")
    ));
    let Some(StreamEvent::Settled(last)) = events.last() else {
        panic!("no settlement: {events:?}");
    };
    assert_eq!(last.extra.as_ref().unwrap().charged_amount, Some(2000));
    let ch = &client.channels()[0];
    assert_eq!((ch.charged, ch.signed_max), (2000, 2000));
    // A price above max_total is refused before anything is signed or paid.
    let err = client
        .stream(&format!("{base}/gpu?tokens=1"), 999)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            x402_upto::client::ClientError::StreamLimit {
                price: 1000,
                max_total: 999
            }
        ),
        "{err}"
    );
    assert_eq!(client.channels()[0].signed_max, 2000);
}

#[derive(serde::Deserialize)]
struct Mode {
    lie: String,
}

/// A server that takes the payment, then lies in a checkpoint or the final event.
fn cheating_app(f: &Fixture) -> Router {
    let required = encode_header(&f.engine.payment_required(
        &x402_upto::wire::ResourceInfo {
            url: "http://localhost/s".into(),
            description: None,
            mime_type: None,
        },
        PRICE,
        None,
    ));
    let handler = move |headers: http::HeaderMap, Query(mode): Query<Mode>| {
        let required = required.clone();
        async move {
            let Some(sig) = headers.get("payment-signature") else {
                return axum::response::Response::builder()
                    .status(402)
                    .header("PAYMENT-REQUIRED", required)
                    .body(Body::empty())
                    .unwrap();
            };
            let channel = b64(sig.to_str().unwrap())["payload"]["voucher"]["channelId"].clone();
            let settle = |charged: u128, amount: &str| {
                encode_header(
                    &json!({"success": true, "transaction": "", "network": "eip155:31337",
                    "amount": amount, "extra": {"chargedAmount": charged.to_string(),
                    "channelState": {"channelId": channel, "balance": "10000", "totalClaimed": "0",
                        "withdrawRequestedAt": 0, "refundNonce": "0",
                        "chargedCumulativeAmount": charged.to_string()}}}),
                )
            };
            if headers.get(STREAM_ID_HEADER).is_some() {
                // The renewal signed 2000: claim 2500 were delivered.
                return axum::response::Response::builder()
                    .header("PAYMENT-RESPONSE", settle(2500, ""))
                    .body(Body::empty())
                    .unwrap();
            }
            let body = match mode.lie.as_str() {
                "final" => format!(
                    "event: token\ndata: 0\n\nevent: payment-response\ndata: {}\n\n",
                    settle(1500, "10000")
                ),
                _ => "event: token\ndata: 0\n\nevent: payment-renewal\ndata: {}\n\n".to_owned(),
            };
            axum::response::Response::builder()
                .header("content-type", "text/event-stream")
                .header(STREAM_ID_HEADER, "00ff")
                .body(Body::from(body))
                .unwrap()
        }
    };
    Router::new().route("/s", get(handler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paying_client_stops_paying_a_server_that_overcharges_a_stream() {
    let f = rig().await;
    for (lie, what) in [
        (
            "final",
            "charged more than the vouchers signed for this stream",
        ),
        (
            "checkpoint",
            "charged more than the vouchers signed for this stream",
        ),
    ] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/s?lie={lie}", l.local_addr().unwrap());
        let app = cheating_app(&f);
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        let client = paying_client(&f);
        let mut s = client.stream(&url, 5000).await.unwrap();
        assert!(matches!(s.next().await, Some(Ok(StreamEvent::Data { .. }))));
        match s.next().await {
            Some(Err(x402_upto::client::ClientError::ServerCheated { what: w, .. })) => {
                assert_eq!(w, what, "{lie}");
            }
            other => panic!("{lie}: expected a cheating server, got {other:?}"),
        }
        assert!(s.next().await.is_none(), "the stream is abandoned");
        // The client's state keeps only what it can prove: nothing confirmed.
        assert_eq!(client.channels()[0].charged, 0);
        // And it never pays that server again.
        let again = client.stream(&url, 5000).await.unwrap_err();
        assert!(
            matches!(again, x402_upto::client::ClientError::ServerCheated { .. }),
            "{again}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_racing_the_end_of_the_budget_keep_the_books_exact() {
    // No grace period: the handler stops the moment its budget is used up, so over TCP the
    // client's renewal sometimes lands in time and sometimes finds the stream gone.
    let f = rig().await;
    let (base, client) = served(&f).await;
    let id = f.id(&client_channel(&f));
    let (mut renewed, mut late) = (0, 0);
    for round in 0..24u64 {
        let before = f.engine.ledger().record(&id).map_or(0, |r| r.charged);
        let sleep = [0, 1_000, 4_000, 15_000][usize::try_from(round % 4).unwrap()];
        let url = format!("{base}/gpu?tokens=15&sleep_us={sleep}");
        let mut s = client.stream(&url, 10_000).await.unwrap();
        let (mut tokens, mut settled) = (0u128, None);
        while let Some(ev) = s.next().await {
            match ev.unwrap() {
                StreamEvent::Data { .. } => tokens += 1,
                StreamEvent::Renewed(_) => renewed += 1,
                StreamEvent::RenewalSkipped { reason } => {
                    assert_eq!(reason, "stream_not_found");
                    late += 1;
                }
                StreamEvent::Settled(r) => settled = r.extra.and_then(|e| e.charged_amount),
            }
        }
        assert!(
            tokens == 10 || tokens == 15,
            "round {round}: {tokens} tokens"
        );
        assert_eq!(settled, Some(tokens * PER_TOKEN), "round {round}");
        let record = f.engine.ledger().record(&id).unwrap();
        assert_eq!(record.charged, before + tokens * PER_TOKEN, "round {round}");
        assert!(record.charged <= record.signed_max_claimable);
        assert!(!f.engine.ledger().is_held(&id));
        assert_eq!(f.engine.store().load(id).await.unwrap().unwrap(), record);
        assert_eq!(client.channels()[0].charged, record.charged);
    }
    println!("renewed in time: {renewed}, too late: {late}");
}

#[tokio::test]
async fn a_smart_wallet_stream_renews_through_erc1271() {
    const WALLET: Address = Address::repeat_byte(0x77);
    let mock = support::MockChain::shared();
    let chain = std::sync::Arc::new(support::WalletChain::new(mock.clone()));
    let mut f = Fixture::over(chain.clone(), mock);
    // The refused renewal below is retried at once once approved: no pause after a wallet
    // refusal here (that pause is tested in tests/server/erc1271.rs).
    f.engine
        .set_cold_read_limits(x402_upto::engine::ColdReadLimits {
            erc1271_backoff: Duration::ZERO,
            ..Default::default()
        });
    let layer = PaymentLayer::fixed(f.engine.clone(), PRICE).streaming();
    f.app = f.app.clone().route("/gpu", get(gpu).layer(layer));
    let config = ChannelConfig {
        payer: WALLET,
        payerAuthorizer: Address::ZERO,
        ..f.config(1)
    };
    let id = f.fund(&config, 10_000);
    let approve = |max: u128| chain.approve(WALLET, f.domain().voucher_digest(id, max));
    // An opaque wallet signature (not 65 bytes), approved per voucher by the wallet.
    let payload = |max: u128| {
        let voucher = json!({"channelId": id.0, "maxClaimableAmount": max.to_string(),
                             "signature": format!("0x{}", "ab".repeat(97))});
        f.payload(
            PRICE,
            json!({"type": "voucher", "channelConfig": support::config_json(&config),
                   "voucher": voucher}),
        )
    };
    approve(1000);
    let mut sse = Sse::open(&f, "/gpu?tokens=15&grace_ms=50", &payload(1000)).await;
    sse.until_renewal().await;
    // Not approved by the wallet: refused, nothing changes.
    refused(
        &f,
        &sse.stream_id,
        Some(&payload(2000)),
        "invalid_batch_settlement_evm_voucher_signature",
    )
    .await;
    approve(2000);
    let a = renew(&f, &sse.stream_id, Some(&payload(2000))).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(charged(&a.response()), 800);
    let (_, _, last) = sse.finish().await;
    assert_eq!(charged(&last), 1500);
    let record = f.engine.ledger().record(&id).unwrap();
    assert_eq!((record.charged, record.signed_max_claimable), (1500, 2000));
    assert_eq!(record.signature.len(), 97, "the wallet's blob, as sent");
}

#[tokio::test]
async fn a_payer_blocked_mid_stream_has_its_renewal_refused_and_nothing_changes() {
    let f = rig().await;
    let blocked = x402_upto::engine::BlockedPayers::default();
    assert!(f.engine.set_blocked_payers(blocked.clone()));
    let (config, _, mut sse) = at_first_renewal(&f, 7, 10_000, 50).await;
    let sid = sse.stream_id.clone();
    blocked.insert(f.payer.address());
    refused_voucher(
        &f,
        &sid,
        &config,
        2000,
        "invalid_batch_settlement_evm_payer_blocked",
    )
    .await;
    // Without its renewal the stream stops at its budget and settles what it delivered:
    // the first budget, in full.
    let (tokens, _, last) = sse.finish().await;
    assert_eq!(tokens, 10 - 8);
    assert_eq!(last["success"], true);
    assert_eq!(charged(&last), 1000);
}
