//! `serve`'s reverse proxy on anvil: priced prefixes are paid through the engine, the
//! upstream reports the actual charge in `X-Upto-Charge`, free paths pass through, and a
//! failing upstream charges nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use support::Chain;
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::engine::{ChainAccess, Engine};
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_app::serve::{ServeConfig, proxy_router};

async fn listen(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_charges_what_the_upstream_reports() {
    let chain = Chain::plain(&[3]).await;
    let landings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let landed = Arc::clone(&landings);
    let upstream = listen(
        Router::new()
            .route(
                "/api/gpu/{n}",
                get(|Path(n): Path<u64>| async move {
                    ([("x-upto-charge", n.to_string())], format!("worked {n}"))
                }),
            )
            .route(
                "/api/broken",
                get(|| async { (axum::http::StatusCode::BAD_GATEWAY, "down") }),
            )
            .route("/health", get(|| async { "ok" }))
            .route(
                "/moved",
                get(|| async {
                    (
                        axum::http::StatusCode::FOUND,
                        [("location", "/landing")],
                        "",
                    )
                }),
            )
            .route(
                "/landing",
                get(move || {
                    landed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async { "landed" }
                }),
            ),
    )
    .await;
    let toml = chain.serve_toml("127.0.0.1:0", &upstream, "/unused")
        + r#"min_deposit = "20000"
[[route]]
prefix = "/api/"
price = 1000
description = "GPU minutes"
"#;
    let cfg: ServeConfig = toml::from_str(&toml).unwrap();
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

    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    );
    let free = client.get(&format!("{proxy}/health")).await.unwrap();
    assert_eq!((free.status.as_u16(), free.settle.is_none()), (200, true));
    // An upstream redirect goes back to the client as sent: the proxy never follows it to
    // another target (which would be served under the path that was priced).
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let moved = plain.get(format!("{proxy}/moved")).send().await.unwrap();
    assert_eq!(moved.status(), 302);
    assert_eq!(moved.headers()["location"], "/landing");
    assert_eq!(landings.load(std::sync::atomic::Ordering::SeqCst), 0);
    let a = client.get(&format!("{proxy}/api/gpu/250")).await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"worked 250");
    assert_eq!(a.charged(), Some(250));
    assert!(a.headers.get("x-upto-charge").is_none());
    // minDeposit from the config sized the deposit.
    assert_eq!(client.channels()[0].deposited, 20_000);
    let a = client.get(&format!("{proxy}/api/broken")).await.unwrap();
    assert_eq!(a.status, 502);
    assert!(a.settle.is_none());
    let a = client.get(&format!("{proxy}/api/gpu/1000")).await.unwrap();
    assert_eq!(a.charged(), Some(1000));
    assert_eq!(client.channels()[0].charged, 1250);
    let id = client.channels()[0].channel_id;
    assert_eq!(engine.ledger().snapshot(&id).unwrap().charged, 1250);
}
