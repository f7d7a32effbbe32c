//! Metered streaming (the GPU-per-minute case) on anvil: an SSE route charges per token
//! against the request's maximum, stops cleanly when it is used up, and settles with a final
//! `payment-response` event; a second request continues the channel; then
//! `PayingClient::stream` renews its voucher mid-stream and the checkpointed voucher is
//! claimed on chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use support::Chain;

use crate::metered::gpu;
use x402_upto::client::{ClientConfig, PayingClient, StreamEvent};
use x402_upto::engine::{ChainAccess, Engine};
use x402_upto::server::PaymentLayer;
use x402_upto::wire::Eip155Network;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metered_stream_stops_at_its_maximum_and_settles_in_a_final_event() {
    let chain = Chain::plain(&[3]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group)).unwrap(),
    );
    let config = x402_upto::engine::EngineConfig {
        network: Eip155Network(31337),
        pay_to: chain.net.key(7).unwrap().address(),
        asset: chain.token,
        asset_name: "USDC".into(),
        asset_version: "2".into(),
        receiver_authorizer: chain.net.key(2).unwrap().address(),
        withdraw_delay: 900,
        max_timeout_seconds: 300,
        extra: Default::default(),
    };
    let access: Arc<dyn ChainAccess> = Arc::new(chain.escrow_client());
    let engine = Engine::new(config, Ledger::new(chain.domain()), store, Some(access)).unwrap();
    let app = Router::new().route(
        "/gpu",
        get(gpu).layer(PaymentLayer::fixed(engine.clone(), 1000).streaming()),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gpu", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    );

    // 25 tokens asked, 10 authorized by one request's maximum: the stream stops at 10.
    let a = client
        .get(&format!("{url}?tokens=25&sleep_us=1000"))
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&a.body).to_string();
    assert_eq!(body.matches("event: token").count(), 10, "{body}");
    assert!(
        body.trim_end()
            .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '=')
    );
    assert_eq!(a.charged(), Some(1000));
    // Renewal: the next paid request continues (the client signs cumulative + max).
    let a = client
        .get(&format!("{url}?tokens=3&sleep_us=1000"))
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&a.body)
            .matches("event: token")
            .count(),
        3
    );
    assert_eq!(a.charged(), Some(300));
    let ch = &client.channels()[0];
    assert_eq!(ch.charged, 1300);
    // Durable before the final event left.
    let stored = x402_upto::Store::load(engine.store().as_ref(), ch.channel_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.charged, 1300);
    assert!(!engine.ledger().is_held(&ch.channel_id));

    // Mid-stream renewal: 25 tokens on a budget of 1000 (10 tokens), renewed twice.
    let mut s = client
        .stream(
            &format!("{url}?tokens=25&grace_ms=5000&sleep_us=1000"),
            3000,
        )
        .await
        .unwrap();
    let (mut tokens, mut renewals, mut settled) = (0, 0, None);
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            StreamEvent::Data { .. } => tokens += 1,
            StreamEvent::Renewed(_) => renewals += 1,
            StreamEvent::RenewalSkipped { reason } => panic!("renewal skipped: {reason}"),
            StreamEvent::Settled(r) => settled = r.extra.and_then(|e| e.charged_amount),
        }
    }
    assert_eq!((tokens, renewals, settled), (25, 2, Some(2500)));
    let ch = &client.channels()[0];
    assert_eq!((ch.charged, ch.signed_max), (3800, 4300));
    // The escrow accepts the stream's last voucher: 3800 claimed under the 4300 ceiling.
    let rows = engine.ledger().claimable();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].claim_total, rows[0].max_claimable), (3800, 4300));
    let escrow = chain.escrow_client();
    escrow.claim(&rows).await.unwrap();
    let onchain = escrow.channel_state(ch.channel_id).await.unwrap();
    assert_eq!(onchain.total_claimed, 3800);
}
