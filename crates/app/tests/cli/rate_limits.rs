//! `serve`'s rate limits and free tier on anvil: a request over its address's or payer's
//! bucket is answered 429 with `Retry-After` and changes nothing (charge, stored voucher,
//! upstream untouched); buckets refill; the payer's bucket is spent only by its own valid
//! vouchers; a free tier serves its allowance at charge 0, then charges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::json;
use support::Chain;
use x402_upto::client::{Answer, ClientConfig, PayingClient};
use x402_upto::engine::{ChainAccess, Engine};
use x402_upto::store::Store;
use x402_upto::typed_data::ChannelId;
use x402_upto::wire::{PAYMENT_REQUIRED, PAYMENT_SIGNATURE, PaymentRequired, decode_header};
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_app::serve::{ServeConfig, proxy_router};

const PRICE: u128 = 100;

/// Serves `app` with each connection's peer address (what the rate limits key on).
async fn listen(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app.into_make_service_with_connect_info::<SocketAddr>()).await;
    });
    url
}

struct Rig {
    chain: Chain,
    engine: Engine<SledStore>,
    proxy: String,
    upstream: String,
    /// Requests the upstream received.
    hits: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn new(routes: &str) -> Self {
        let chain = Chain::plain(&[3, 4]).await;
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let upstream = listen(Router::new().fallback(get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        })))
        .await;
        let toml = chain.serve_toml("127.0.0.1:0", &upstream, "/unused") + routes;
        let cfg = ServeConfig::from_toml(&toml).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store =
            SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group)).unwrap();
        let access: Arc<dyn ChainAccess> = Arc::new(chain.escrow_client());
        let engine = Engine::new(
            cfg.engine_config(chain.net.key(2).unwrap().address()),
            Ledger::new(chain.domain()),
            Arc::new(store),
            Some(access),
        )
        .unwrap();
        let proxy = listen(proxy_router(engine.clone(), &cfg).unwrap()).await;
        Self {
            chain,
            engine,
            proxy,
            upstream,
            hits,
            _dir: dir,
        }
    }

    fn client(&self, key: usize) -> PayingClient {
        PayingClient::new(
            ClientConfig::new(self.chain.net.key(key).unwrap())
                .with_contracts(self.chain.escrow, self.chain.collector),
        )
    }

    /// What a refused request must leave alone: the ledger's charge and voucher, the stored
    /// record, and the upstream's count.
    async fn state(&self, id: ChannelId) -> (u128, Option<u128>, Option<(u128, Vec<u8>)>, usize) {
        let ledger = self.engine.ledger();
        let stored = self.engine.store().load(id).await.unwrap();
        (
            ledger.snapshot(&id).unwrap().charged,
            ledger.last_voucher(&id).map(|v| v.signed_max_claimable),
            stored.map(|r| (r.charged, r.signature.to_vec())),
            self.hits.load(Ordering::SeqCst),
        )
    }
}

fn retry_after(a: &Answer) -> u64 {
    a.headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_address_limit_is_429_with_retry_after_and_changes_nothing() {
    // Burst 3, one more every 2 s.
    let rig = Rig::new(
        r#"
[[route]]
prefix = "/api/"
price = 100
limits = { ip = { rate = 0.5, burst = 3 } }
"#,
    )
    .await;
    let c = rig.client(3);
    let url = format!("{}/api/x", rig.proxy);
    // The first call is a 402 and the payment (two tokens), the second one paid request.
    assert_eq!(c.get(&url).await.unwrap().charged(), Some(PRICE));
    assert_eq!(c.get(&url).await.unwrap().charged(), Some(PRICE));
    let id = c.channels()[0].channel_id;
    let before = rig.state(id).await;
    assert_eq!(before.0, 2 * PRICE);
    assert_eq!(before.3, 2);

    let refused = c.get(&url).await.unwrap();
    assert_eq!(refused.status, 429);
    assert!(refused.settle.is_none());
    let wait = retry_after(&refused);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Nothing charged, no voucher stored, no hold left, the upstream not reached.
    assert_eq!(rig.state(id).await, before);
    assert!(!rig.engine.ledger().is_held(&id));
    // A request without payment is counted too (the address bucket comes first).
    let plain = reqwest::get(&url).await.unwrap();
    assert_eq!(plain.status(), 429);

    // The bucket refills: after Retry-After the next request is served and charged.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let again = c.get(&url).await.unwrap();
    assert_eq!((again.status.as_u16(), again.charged()), (200, Some(PRICE)));
    assert_eq!(rig.state(id).await.0, 3 * PRICE);
}

/// A voucher header for `client`'s channel with a signature that is not the payer's.
async fn forged_header(rig: &Rig, client: &PayingClient, url: &str) -> String {
    let offer = reqwest::get(url).await.unwrap();
    let required: PaymentRequired =
        decode_header(offer.headers()[PAYMENT_REQUIRED].as_bytes(), usize::MAX).unwrap();
    let channel = &client.channels()[0];
    let charged = rig
        .engine
        .ledger()
        .snapshot(&channel.channel_id)
        .unwrap()
        .charged;
    let payload = json!({
        "x402Version": 2,
        "accepted": required.accepts[0],
        "payload": {
            "type": "voucher",
            "channelConfig": channel.config,
            "voucher": {
                "channelId": channel.channel_id.0,
                "maxClaimableAmount": (charged + PRICE).to_string(),
                "signature": format!("0x{}1b", "11".repeat(64)),
            }
        }
    });
    x402_upto::wire::encode_header(&payload)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payer_limit_is_per_payer_and_spent_only_by_its_own_signatures() {
    let rig = Rig::new(
        r#"
[[route]]
prefix = "/api/"
price = 100

[limits]
payer = { rate = 0.5, burst = 2 }
"#,
    )
    .await;
    let (alice, bob) = (rig.client(3), rig.client(4));
    let url = format!("{}/api/x", rig.proxy);
    // Alice's first paid request: one token of two.
    assert_eq!(alice.get(&url).await.unwrap().charged(), Some(PRICE));
    let id = alice.channels()[0].channel_id;
    // Someone else sends vouchers for Alice's channel it cannot sign: refused by the engine,
    // and her bucket is not touched (only a verified payer's requests take tokens).
    let forged = forged_header(&rig, &alice, &url).await;
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let r = http
            .get(&url)
            .header(PAYMENT_SIGNATURE, &forged)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
    }
    assert_eq!(alice.get(&url).await.unwrap().charged(), Some(PRICE));
    let before = rig.state(id).await;
    assert_eq!((before.0, before.3), (2 * PRICE, 2));
    // Over: 429 before the signature is even checked, nothing changed.
    let refused = alice.get(&url).await.unwrap();
    assert_eq!(refused.status, 429);
    assert!(
        String::from_utf8_lossy(&refused.body).contains("payer"),
        "{:?}",
        refused.body
    );
    assert!((1..=2).contains(&retry_after(&refused)));
    assert_eq!(rig.state(id).await, before);
    assert!(!rig.engine.ledger().is_held(&id));
    // Bob, from the same address, has his own bucket.
    let b = bob.get(&url).await.unwrap();
    assert_eq!((b.status.as_u16(), b.charged()), (200, Some(PRICE)));
    assert_eq!(bob.get(&url).await.unwrap().charged(), Some(PRICE));
    assert_eq!(bob.get(&url).await.unwrap().status, 429);
    // A payer over its limit can still take its money back: refunds are not limited by payer.
    let refunded = bob.refund(&url, None).await.unwrap();
    assert!(refunded.success, "{refunded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_tier_serves_its_allowance_at_charge_zero_then_charges() {
    let rig = Rig::new(
        r#"
[[route]]
prefix = "/api/"
price = 100
free_tier = { requests = 2, period_secs = 3600 }

[[route]]
prefix = "/paid/"
price = 100
"#,
    )
    .await;
    let (alice, bob) = (rig.client(3), rig.client(4));
    let url = format!("{}/api/x", rig.proxy);
    for _ in 0..2 {
        let a = alice.get(&url).await.unwrap();
        assert_eq!((a.status.as_u16(), a.charged()), (200, Some(0)));
    }
    let id = alice.channels()[0].channel_id;
    assert_eq!(rig.engine.ledger().snapshot(&id).unwrap().charged, 0);
    // The allowance spent: the next request pays.
    assert_eq!(alice.get(&url).await.unwrap().charged(), Some(PRICE));
    assert_eq!(rig.engine.ledger().snapshot(&id).unwrap().charged, PRICE);
    assert_eq!(alice.channels()[0].charged, PRICE);
    // A route without a free tier charges from the first request; another payer has its own
    // allowance.
    assert_eq!(
        alice
            .get(&format!("{}/paid/x", rig.proxy))
            .await
            .unwrap()
            .charged(),
        Some(PRICE)
    );
    assert_eq!(bob.get(&url).await.unwrap().charged(), Some(0));
    // A request without a valid voucher gets no free tier: a header is not proof.
    let forged = forged_header(&rig, &alice, &url).await;
    let r = reqwest::Client::new()
        .get(&url)
        .header(PAYMENT_SIGNATURE, &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(rig.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_limits_from_the_next_request() {
    use x402_upto_app::serve::reload::Reloader;
    let rig = Rig::new("[[route]]\nprefix = \"/api/\"\nprice = 100\n").await;
    let base = rig
        .chain
        .serve_toml("127.0.0.1:0", &rig.upstream, "/unused");
    let config = |extra: &str| ServeConfig::from_toml(&(base.clone() + extra)).unwrap();
    let routes = "[[route]]\nprefix = \"/api/\"\nprice = 100\n";
    let (app, reloader) = Reloader::new(rig.engine.clone(), &config(routes)).unwrap();
    let proxy = listen(app).await;
    let url = format!("{proxy}/api/x");
    let c = rig.client(3);
    for _ in 0..3 {
        assert_eq!(c.get(&url).await.unwrap().status, 200);
    }
    // One request per 100 s from now on.
    let limited = format!("[limits]\nip = {{ rate = 0.01, burst = 1 }}\n{routes}");
    reloader.reload(config(&limited)).unwrap();
    assert_eq!(c.get(&url).await.unwrap().status, 200);
    let refused = c.get(&url).await.unwrap();
    assert_eq!(refused.status, 429);
    assert!(retry_after(&refused) > 90);
    // Limits off again.
    reloader.reload(config(routes)).unwrap();
    assert_eq!(c.get(&url).await.unwrap().charged(), Some(PRICE));
}
