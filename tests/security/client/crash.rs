//! A request cut by a server crash after its voucher was stored is charged (the client
//! signed for it; the spec allows it), and the client learns it from the next corrective
//! 402, which carries its own signature over that voucher: it adopts it and pays on.

use std::sync::Arc;

use axum::extract::Query;
use axum::routing::get;
use axum::{Extension, Router};
use x402_upto::client::{ClientConfig, ClientError, PayingClient};
use x402_upto::server::{Charge, PaymentLayer};

use super::interop::{Chain, OurServer, serve_local};

#[derive(serde::Deserialize)]
struct Q {
    charge: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_after_its_voucher_was_stored_is_charged_and_learned_from_the_next_402() {
    let chain = Chain::plain(&[3]).await;
    let s = OurServer::start(&chain, 1000).await;
    let paid = get(
        |Extension(charge): Extension<Charge>, Query(q): Query<Q>| async move {
            charge.set(u128::from(q.charge));
            "ok"
        },
    )
    .layer(PaymentLayer::fixed(s.engine.clone(), 1000));
    // `?cut`: the payment layer runs (the voucher is durable), then the process "dies"
    // before the response leaves: the connection is dropped without an answer.
    let app = Router::new()
        .route("/paid", paid)
        .layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                let cut = req.uri().query().is_some_and(|q| q.contains("cut"));
                let res = next.run(req).await;
                if cut {
                    std::panic::resume_unwind(Box::new("simulated crash after the store"));
                }
                res
            },
        ));
    let (base, _) = serve_local(app).await;
    let url = format!("{base}/paid");
    let dir = tempfile::tempdir().unwrap();
    let c = Arc::new(PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(dir.path()),
    ));
    let a = c.get(&format!("{url}?charge=100")).await.unwrap();
    assert_eq!(a.charged(), Some(100));
    let id = c.channels()[0].channel_id;
    let nonce = chain.relayer_nonce().await;

    let err = c.get(&format!("{url}?charge=300&cut")).await.unwrap_err();
    assert!(matches!(err, ClientError::Http(_)), "{err:?}");
    // Charged on the server, unknown to the client.
    assert_eq!(s.engine.ledger().snapshot(&id).unwrap().charged, 400);
    assert_eq!(c.channels()[0].charged, 100);

    // The next request meets the corrective 402, proves it with its own signature, pays on.
    let a = c.get(&format!("{url}?charge=50")).await.unwrap();
    assert_eq!((a.status.as_u16(), a.charged()), (200, Some(50)));
    assert_eq!(c.channels()[0].charged, 450);
    assert_eq!(s.engine.ledger().snapshot(&id).unwrap().charged, 450);
    assert!(
        c.cheaters().is_empty(),
        "a proven corrective 402 is not cheating"
    );
    assert_eq!(chain.relayer_nonce().await, nonce, "no transaction was due");
}
