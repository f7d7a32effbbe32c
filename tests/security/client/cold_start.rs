//! The client's cold start from the chain, against our own server on anvil: a client with
//! no local state and an RPC URL bases its first voucher on the escrow's `totalClaimed` and
//! uses the channel's balance (no second deposit); an RPC it cannot use fails the request
//! before anything is signed or sent. (Against the official server: `interop_stock_server`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};

use super::interop::{Chain, OurServer, serve_local};

const PAYER: usize = 3;

fn config(chain: &Chain, dir: &std::path::Path) -> ClientConfig {
    ClientConfig::new(chain.net.key(PAYER).unwrap())
        .with_contracts(chain.escrow, chain.collector)
        .with_state_dir(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_state_pays_from_the_chains_total_claimed_after_a_server_restart() {
    let chain = Chain::plain(&[PAYER]).await;
    let first = OurServer::start(&chain, 1000).await;
    let dir = tempfile::tempdir().unwrap();
    let c = PayingClient::new(config(&chain, dir.path()));
    for _ in 0..3 {
        let a = c.get(&format!("{}?charge=1000", first.url)).await.unwrap();
        assert_eq!(a.charged(), Some(1000));
    }
    let id = c.channels()[0].channel_id;
    // The server claims what it charged, then loses everything (a new store, a new port).
    let rows = first.engine.ledger().claimable();
    chain.escrow_client().claim(&rows).await.unwrap();
    first.task.abort();
    let escrow = chain.escrow_client();
    let onchain = escrow.channel_state(id).await.unwrap();
    assert_eq!((onchain.balance, onchain.total_claimed), (10_000, 3000));
    let second = OurServer::start(&chain, 1000).await;

    // The client lost its state too; with the RPC it reads the channel and pays at once.
    drop(dir);
    let payer = chain.net.key(PAYER).unwrap().address();
    let (tokens, nonce) = (
        chain.net.balance_of(payer).await.unwrap(),
        chain.relayer_nonce().await,
    );
    let empty = tempfile::tempdir().unwrap();
    let cold = PayingClient::new(config(&chain, empty.path()).with_rpc(chain.rpc.clone()));
    let a = cold
        .get(&format!("{}?charge=250", second.url))
        .await
        .unwrap();
    assert_eq!((a.status.as_u16(), a.charged()), (200, Some(250)));
    let local = &cold.channels()[0];
    assert_eq!((local.charged, local.balance), (3250, 10_000));
    // No second deposit: the payer's tokens and the relayer's nonce are unchanged.
    assert_eq!(chain.net.balance_of(payer).await.unwrap(), tokens);
    assert_eq!(chain.relayer_nonce().await, nonce);
    let snap = second.engine.ledger().snapshot(&id).unwrap();
    assert_eq!((snap.charged, snap.balance), (3250, 10_000));
    assert_eq!(escrow.channel_state(id).await.unwrap(), onchain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_rpc_fails_the_cold_start_before_anything_is_sent() {
    let chain = Chain::plain(&[PAYER]).await;
    let s = OurServer::start(&chain, 1000).await;
    // Counts the paid requests that reach the server.
    let paid = Arc::new(AtomicUsize::new(0));
    let counter = paid.clone();
    let upstream = s.url.clone();
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let (counter, upstream) = (counter.clone(), upstream.clone());
        async move {
            let mut out = reqwest::Client::new().get(&upstream);
            if let Some(h) = req.headers().get("payment-signature") {
                counter.fetch_add(1, Ordering::SeqCst);
                out = out.header("payment-signature", h);
            }
            let res = out.send().await.unwrap();
            let mut answer = axum::response::Response::builder().status(res.status().as_u16());
            for (k, v) in res.headers() {
                answer = answer.header(k.as_str(), v.as_bytes());
            }
            answer
                .body(axum::body::Body::from(res.bytes().await.unwrap()))
                .unwrap()
        }
    });
    let (base, _) = serve_local(app).await;
    let url = format!("{base}/paid");

    let nonce = chain.relayer_nonce().await;
    for (rpc, needle) in [
        ("http://127.0.0.1:9".to_owned(), "eth_chainId"),
        ("not a url".to_owned(), "rpc url"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = PayingClient::new(config(&chain, dir.path()).with_rpc(rpc));
        let err = c.get(&url).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::ColdStart(m) if m.contains(needle)),
            "{err:?}"
        );
        assert!(c.channels().is_empty(), "no state written");
    }
    assert_eq!(
        paid.load(Ordering::SeqCst),
        0,
        "nothing signed reached the server"
    );
    assert!(s.engine.ledger().records().is_empty());
    assert_eq!(chain.relayer_nonce().await, nonce);
}
