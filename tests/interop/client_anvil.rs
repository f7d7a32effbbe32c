//! Our Rust client pays our server on anvil: deposits, vouchers, state kept on disk across
//! client restarts, resync from a corrective 402 after losing its state, refund; and it stops
//! paying a server that overcharges.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use axum::Router;
use axum::routing::get;
use support::{Chain, OurServer};
use x402_upto::client::{ClientConfig, ClientError, PayingClient};

fn client(chain: &Chain, key: usize, dir: &std::path::Path) -> PayingClient {
    let cfg = ClientConfig::new(chain.net.key(key).unwrap())
        .with_contracts(chain.escrow, chain.collector)
        .with_state_dir(dir);
    PayingClient::new(cfg)
}

/// Anvil with payer anvil:3, our server at a price of 1000, the payer and its tokens.
async fn rig() -> (Chain, OurServer, alloy_primitives::Address, u128) {
    let chain = Chain::plain(&[3]).await;
    let server = OurServer::start(&chain, 1000).await;
    let payer = chain.net.key(3).unwrap().address();
    let start = chain.net.balance_of(payer).await.unwrap();
    (chain, server, payer, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pays_our_server_resyncs_and_refunds() {
    let (chain, server, payer, start) = rig().await;
    let dir = tempfile::tempdir().unwrap();

    let c = client(&chain, 3, dir.path());
    let mut charged = 0u128;
    for i in 0..25u128 {
        let url = format!("{}?charge={}", server.url, (i * 37) % 1000);
        let a = c.get(&url).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.charged(), Some((i * 37) % 1000));
        charged += (i * 37) % 1000;
    }
    let ch = c.channels();
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].charged, charged);
    assert!(ch[0].deposited >= 10_000);

    // A new client process with the same state dir continues without a corrective 402.
    let c2 = client(&chain, 3, dir.path());
    let a = c2.get(&format!("{}?charge=5", server.url)).await.unwrap();
    assert_eq!(a.charged(), Some(5));
    charged += 5;

    // A client that lost its state resyncs from the corrective 402 (our own signature).
    let empty = tempfile::tempdir().unwrap();
    let c3 = client(&chain, 3, empty.path());
    let a = c3.get(&format!("{}?charge=7", server.url)).await.unwrap();
    assert_eq!(a.status, 200);
    charged += 7;
    assert_eq!(c3.channels()[0].charged, charged);

    // Refund everything unspent.
    let r = c3.refund(&server.url, None).await.unwrap();
    assert!(r.success);
    assert_eq!(chain.net.balance_of(payer).await.unwrap(), start - charged);
    assert!(c3.channels().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_voucher_key_pays_for_the_payer() {
    let chain = Chain::plain(&[3]).await;
    let server = OurServer::start(&chain, 1000).await;
    let delegate = alloy::signers::local::PrivateKeySigner::random();
    let c = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_voucher_signer(delegate.clone()),
    );
    for _ in 0..3 {
        let a = c.get(&format!("{}?charge=10", server.url)).await.unwrap();
        assert_eq!(a.charged(), Some(10));
    }
    let ch = &c.channels()[0];
    assert_eq!(ch.config.payer_authorizer, delegate.address());
    assert_eq!(ch.config.payer, chain.net.key(3).unwrap().address());
    assert_eq!(ch.charged, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payer_can_exit_alone_with_a_timed_withdrawal_of_the_unspent_balance() {
    let (chain, server, payer, start) = rig().await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, 3, dir.path());
    c.get(&format!("{}?charge=300", server.url)).await.unwrap();
    let id = c.channels()[0].channel_id;
    c.withdraw(&chain.rpc, id, false).await.unwrap();
    // Finalizing before the delay reverts in estimation; after it, the unspent 9,700 return.
    assert!(c.withdraw(&chain.rpc, id, true).await.is_err());
    chain.net.increase_time(901).await.unwrap();
    c.withdraw(&chain.rpc, id, true).await.unwrap();
    assert_eq!(chain.net.balance_of(payer).await.unwrap(), start - 300);
}

#[tokio::test]
async fn our_client_stops_paying_a_server_that_overcharges() {
    let chain = Chain::plain(&[]).await;
    let (url, _) = support::overcharging_server(
        chain.token,
        chain.net.key(7).unwrap().address(),
        chain.net.key(2).unwrap().address(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, 3, dir.path());
    let err = c.get(&url).await.unwrap_err();
    assert!(matches!(err, ClientError::ServerCheated { .. }), "{err:?}");
    let err = c.get(&url).await.unwrap_err();
    assert!(matches!(err, ClientError::ServerCheated { .. }), "{err:?}");
}

/// After its first 402 on a resource, the client pays every later request there at once (one
/// round trip, whatever the query string); when the server's offer changes, the server's 402
/// carries the new one and the client pays again from it, once, without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pays_ahead_after_its_first_402_and_follows_a_changed_offer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use x402_upto::server::{Charge, PaymentLayer, Price};

    let chain = Chain::plain(&[3]).await;
    let server = OurServer::start(&chain, 1000).await;
    let price = Arc::new(AtomicU64::new(1000));
    let unpaid = Arc::new(AtomicU64::new(0));
    let p = price.clone();
    let layer = PaymentLayer::new(
        server.engine.clone(),
        Price::Dynamic(Arc::new(move |_| u128::from(p.load(Ordering::SeqCst)))),
    );
    let counter = unpaid.clone();
    let app = Router::new()
        .route(
            "/metered",
            get(
                |axum::Extension(charge): axum::Extension<Charge>| async move {
                    charge.set(10);
                    "ok"
                },
            )
            .layer(layer),
        )
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let counter = counter.clone();
                async move {
                    if !req.headers().contains_key("payment-signature") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    next.run(req).await
                }
            },
        ));
    let (local, _) = support::serve_local(app).await;
    let base = format!("{local}/metered");

    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, 3, dir.path());
    for i in 0..10 {
        let a = c.get(&format!("{base}?page={i}")).await.unwrap();
        assert_eq!((a.status.as_u16(), a.charged()), (200, Some(10)));
    }
    // One unpaid request in all: the first.
    assert_eq!(unpaid.load(Ordering::SeqCst), 1);

    // The offer changes: the remembered one is refused, the new one is paid from the 402.
    price.store(2000, Ordering::SeqCst);
    let a = c.get(&format!("{base}?page=10")).await.unwrap();
    assert_eq!((a.status.as_u16(), a.charged()), (200, Some(10)));
    assert_eq!(unpaid.load(Ordering::SeqCst), 1);
    assert_eq!(c.channels()[0].charged, 110);
}

/// Concurrent requests on one channel from one client: each receipt is checked against the
/// state its voucher was signed on (the client's channel turn), so an honest server is never
/// taken for a cheat, and every charge reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_channel_all_pay() {
    let (chain, server, _payer, _start) = rig().await;
    let c = std::sync::Arc::new(PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    ));
    let mut charged = c
        .get(&format!("{}?charge=5", server.url))
        .await
        .unwrap()
        .charged()
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..6u128 {
        let c = c.clone();
        let url = server.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0;
            for i in 0..5u128 {
                let a = c
                    .get(&format!("{url}?charge={}", 10 * t + i + 1))
                    .await
                    .unwrap();
                assert_eq!(a.charged(), Some(10 * t + i + 1));
                sum += 10 * t + i + 1;
            }
            sum
        }));
    }
    for t in tasks {
        charged += t.await.unwrap();
    }
    assert_eq!(c.channels()[0].charged, charged);
    assert!(c.cheaters().is_empty());
}
