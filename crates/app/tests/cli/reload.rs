//! `serve` reloads its routes, prices and limits on SIGHUP (a process on anvil): a request in
//! flight across the signal finishes and is charged at the price it started with, the next
//! one gets the new offer, open connections stay open; a broken file or a change that needs
//! a restart is refused and the running configuration kept.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::Chain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::wire::{PAYMENT_REQUIRED, PaymentRequired, decode_header};
use x402_upto_app::serve::ServeConfig;
use x402_upto_app::serve::reload::unreloadable_changes;
use x402_upto_testkit::free_port;

use crate::serve_process;

fn route(price: u64) -> String {
    format!("\n[[route]]\nprefix = \"/api/\"\nprice = {price}\n")
}

/// The price the proxy offers now for `/api/x`.
async fn offered(proxy: &str) -> u128 {
    let r = reqwest::get(format!("{proxy}/api/x")).await.unwrap();
    assert_eq!(r.status(), 402);
    let required: PaymentRequired =
        decode_header(r.headers()[PAYMENT_REQUIRED].as_bytes(), usize::MAX).unwrap();
    required.accepts[0].amount_u128().unwrap()
}

/// The value of `x402_config_reloads_total{outcome="…"}` in a scrape (0 if absent).
async fn reloads(metrics: &str, outcome: &str) -> u64 {
    let text = reqwest::get(metrics).await.unwrap().text().await.unwrap();
    let wanted = format!("x402_config_reloads_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&wanted))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn hangup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One request on a kept-alive connection; the status code.
async fn on_connection(conn: &mut tokio::net::TcpStream) -> u16 {
    conn.write_all(b"GET /health HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.ends_with("ok"), "{head}");
    head[9..12].parse().unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_prices_without_dropping_requests_or_connections() {
    let chain = Chain::plain(&[3, 4]).await;
    let arrived = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&arrived);
    let upstream = {
        let app = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/api/slow",
                get(move || {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        "slow"
                    }
                }),
            )
            .fallback(get(|| async { "fast" }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let head =
        format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\n[deposits]\nconfirmations = 0\n");
    let (config, port) = serve_process::write_config(&chain, dir.path(), &upstream, &head);
    let base = std::fs::read_to_string(&config).unwrap();
    write(&config, &(base.clone() + &route(1000)));
    let mut child = serve_process::spawn(&chain, &config);
    let proxy = format!("http://127.0.0.1:{port}");
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    assert!(serve_process::answers(&format!("{proxy}/health"), 200).await);

    let alice = Arc::new(PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    ));
    assert_eq!(
        alice
            .get(&format!("{proxy}/api/fast"))
            .await
            .unwrap()
            .charged(),
        Some(1000)
    );
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert_eq!(on_connection(&mut conn).await, 200);

    // A paid request in flight (the upstream takes 1.5 s) when the price changes.
    let in_flight = {
        let (alice, url) = (Arc::clone(&alice), format!("{proxy}/api/slow"));
        tokio::spawn(async move { alice.get(&url).await.unwrap() })
    };
    until("the slow request upstream", async || {
        arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    write(&config, &(base.clone() + &route(2000)));
    hangup(&child);
    until("the new price", async || offered(&proxy).await == 2000).await;
    assert_eq!(reloads(&metrics, "applied").await, 1);
    let slow = in_flight.await.unwrap();
    assert_eq!(&slow.body[..], b"slow");
    assert_eq!(
        slow.charged(),
        Some(1000),
        "settled at the price it started with"
    );
    // The next request is offered, and pays, the new price.
    let next = alice.get(&format!("{proxy}/api/fast")).await.unwrap();
    assert_eq!((next.status.as_u16(), next.charged()), (200, Some(2000)));
    let bob = PayingClient::new(
        ClientConfig::new(chain.net.key(4).unwrap()).with_contracts(chain.escrow, chain.collector),
    );
    assert_eq!(
        bob.get(&format!("{proxy}/api/fast"))
            .await
            .unwrap()
            .charged(),
        Some(2000)
    );
    // The connection opened before the reload still serves.
    assert_eq!(on_connection(&mut conn).await, 200);

    // A broken file: refused, the old configuration kept, serve still answers.
    write(&config, "listen = [this is not toml");
    hangup(&child);
    until("the refusal", async || {
        reloads(&metrics, "refused").await == 1
    })
    .await;
    assert_eq!(offered(&proxy).await, 2000);
    assert_eq!(
        alice
            .get(&format!("{proxy}/api/fast"))
            .await
            .unwrap()
            .charged(),
        Some(2000)
    );
    // A change that needs a restart (another listener) is refused whole: the price in the
    // same file is not applied either.
    let moved = base.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    assert_ne!(moved, base);
    write(&config, &(moved + &route(3000)));
    hangup(&child);
    until("the second refusal", async || {
        reloads(&metrics, "refused").await == 2
    })
    .await;
    assert_eq!(offered(&proxy).await, 2000);
    assert_eq!(on_connection(&mut conn).await, 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "serve is still running"
    );
    // The same file back with a new price: applied.
    write(&config, &(base + &route(500)));
    hangup(&child);
    until("the price of the third file", async || {
        offered(&proxy).await == 500
    })
    .await;
    assert_eq!(
        alice
            .get(&format!("{proxy}/api/fast"))
            .await
            .unwrap()
            .charged(),
        Some(500)
    );
    child.kill().await.unwrap();
}

#[test]
fn what_a_reload_cannot_change_is_named() {
    let base = r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:9000"
rpc = "http://127.0.0.1:8545"
chain_id = 31337
escrow = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
collector = "0x4020806089470a89826cB9fB1f4059150b550004"
asset = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
asset_name = "USDC"
asset_version = "2"
pay_to = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
store = "./data/channels"
"#;
    let parse = |extra: &str, swap: (&str, &str)| {
        ServeConfig::from_toml(&(base.replace(swap.0, swap.1) + extra)).unwrap()
    };
    let old = parse(&route(1000), ("", ""));
    // Routes, upstream, limits, public_url and the upstream's timeouts reload.
    let reloadable = parse(
        "public_url = \"https://api.example.com\"\n[http]\nupstream_timeout_secs = 9\n\
         [limits]\nip = { rate = 1.0, burst = 2 }\n[[route]]\nprefix = \"/b/\"\nprice = 5\n",
        ("127.0.0.1:9000", "127.0.0.1:9001"),
    );
    assert!(unreloadable_changes(&old, &reloadable).is_empty());
    let fixed = parse(
        "[settlement]\nbatch_size = 7\n[http]\nmax_connections = 9\n",
        ("chain_id = 31337", "chain_id = 8453"),
    );
    assert_eq!(
        unreloadable_changes(&old, &fixed),
        vec!["chain_id", "settlement", "http.max_connections"]
    );
    let store = parse("", ("./data/channels", "./elsewhere"));
    assert_eq!(unreloadable_changes(&old, &store), vec!["store"]);
    let admin = parse("[admin]\nlisten = \"127.0.0.1:9470\"\n", ("", ""));
    assert_eq!(unreloadable_changes(&old, &admin), vec!["admin"]);
}

/// A fake OpenAI API whose streams send ten deltas 60 ms apart, then their usage.
async fn slow_stream_api() -> String {
    use axum::body::{Body, Bytes};
    let answer = || async {
        let delta = |c: &str| {
            format!(
                "data: {}\n\n",
                serde_json::json!({"choices": [{"index": 0, "delta": {"content": c}}], "usage": null})
            )
        };
        let mut events = vec![delta("")];
        events.extend((0..10).map(|_| delta("abc")));
        events.push(format!(
            "data: {}\n\n",
            serde_json::json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 10}})
        ));
        events.push("data: [DONE]\n\n".into());
        let paced = futures_util::StreamExt::then(futures_util::stream::iter(events), |e| async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            Ok::<_, std::convert::Infallible>(Bytes::from(e))
        });
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(paced))
            .unwrap()
    };
    let app = Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    support::serve_local(app).await.0
}

fn token_routes(other_price: u64, description: &str, limits: &str) -> String {
    format!(
        r#"min_deposit = "1000000"
{limits}
[[route]]
prefix = "/v1/chat/completions"
tokens = "openai"
stream_increment_tokens = 2
renewal_grace_secs = 1
description = "{description}"
[route.models]
"m" = {{ input = 1000000, output = 100000000 }}
[[route]]
prefix = "/other/"
price = {other_price}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_live_streams_of_the_routes_it_does_not_change() {
    use x402_upto::client::StreamEvent;
    use x402_upto::engine::{ChainAccess, Engine};
    use x402_upto::{Durability, Ledger, SledOptions, SledStore};
    use x402_upto_app::serve::reload::Reloader;

    let chain = Chain::plain(&[3]).await;
    let upstream = slow_stream_api().await;
    let config = |other_price: u64, description: &str, limits: &str| {
        let toml = chain.serve_toml("127.0.0.1:0", &upstream, "/unused")
            + &token_routes(other_price, description, limits);
        ServeConfig::from_toml(&toml).unwrap()
    };
    let cfg = config(1, "chat", "");
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
    let (app, reloader) = Reloader::new(engine, &cfg).unwrap();
    let (proxy, _) = support::serve_local(app).await;
    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    );
    let url = format!("{proxy}/v1/chat/completions");
    let body =
        r#"{"model":"m","max_tokens":50,"stream":true,"stream_options":{"include_usage":true}}"#;

    // Another route's price and the limits change under a live stream: it keeps renewing.
    let mut stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
    let (mut data, mut renewed, mut after_reload) = (0, 0, 0);
    let charged = loop {
        match stream.next().await.unwrap().unwrap() {
            StreamEvent::Data { .. } => data += 1,
            StreamEvent::Renewed(_) => {
                renewed += 1;
                if renewed == 1 {
                    let limits = "[limits]\npayer = { rate = 1000.0, burst = 1000 }\n";
                    reloader.reload(config(2, "chat", limits)).unwrap();
                } else {
                    after_reload += 1;
                }
            }
            StreamEvent::RenewalSkipped { reason } => panic!("renewal refused: {reason}"),
            StreamEvent::Settled(s) => break s.extra.and_then(|e| e.charged_amount).unwrap(),
        }
    };
    assert_eq!(data, 13, "every event, [DONE] included");
    assert!(
        after_reload >= 1,
        "renewed {renewed} times, {after_reload} after the reload"
    );
    assert_eq!(charged, 20 + 10 * 100, "the usage, at the route's prices");

    // The stream's own route changes: the stream runs on, but its renewals go to the new
    // route, which does not know it; it ends at its budget, charged what it delivered.
    let mut stream = client.stream_post_json(&url, body, 100_000).await.unwrap();
    let (mut renewed, mut refused) = (0, None);
    let cut = loop {
        match stream.next().await.unwrap().unwrap() {
            StreamEvent::Data { .. } => {}
            StreamEvent::Renewed(_) => {
                renewed += 1;
                if renewed == 1 {
                    reloader.reload(config(2, "chat, renamed", "")).unwrap();
                }
            }
            StreamEvent::RenewalSkipped { reason } => refused = Some(reason),
            StreamEvent::Settled(s) => break s.extra.and_then(|e| e.charged_amount).unwrap(),
        }
    };
    assert_eq!(renewed, 1);
    assert!(
        refused
            .as_deref()
            .is_some_and(|r| r.contains("stream_not_found")),
        "{refused:?}"
    );
    assert!(cut < charged, "cut at its budget: {cut}");
}
