//! The stock `@x402/fetch` + `@x402/evm` batch-settlement client pays our server on anvil:
//! three channels opened by gasless deposits, top-ups, ≥ 100 paid requests, then the SDK's
//! cooperative refund on every channel; reconciled against on-chain state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::time::{Duration, Instant};

use support::{Chain, OurServer, node};

/// Runs `stock-client.mjs` (quiet) against `server`: `requests` paid requests from the
/// payers `keys`, with the `extra` flags. Its JSON summary.
async fn stock_client(
    chain: &Chain,
    server: &OurServer,
    keys: &str,
    requests: u32,
    extra: &[&str],
    timeout: Duration,
) -> serde_json::Value {
    let requests = requests.to_string();
    let args = [
        "stock-client.mjs",
        "--url",
        &server.url,
        "--rpc",
        &chain.rpc,
        "--keys",
        keys,
        "--requests",
        &requests,
        "--quiet",
    ];
    node(&[&args[..], extra].concat(), timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_pays_our_server_and_refunds() {
    let t0 = Instant::now();
    let chain = Chain::start(&[3, 4, 5]).await;
    let server = OurServer::start(&chain, 1000).await;
    // X402_WIRE_LOG=FILE keeps the first sample of every message kind (docs/protocol.md).
    let wire_log = std::env::var("X402_WIRE_LOG").ok();
    let mut extra = vec!["--refund"];
    if let Some(f) = &wire_log {
        extra.extend(["--wire-log", f.as_str()]);
    }
    let summary = stock_client(
        &chain,
        &server,
        "anvil:3,anvil:4,anvil:5",
        120,
        &extra,
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(summary["ok"], true, "{summary:#}");
    assert_eq!(summary["failed"], 0, "{summary:#}");
    assert_eq!(summary["requests"], 120, "{summary:#}");
    let channels = summary["channels"].as_array().unwrap();
    assert_eq!(channels.len(), 3);
    let mut deposits = 0;
    for c in channels {
        let charged: u128 = c["charged"].as_str().map_or_else(
            || c["charged"].as_u64().map(u128::from).unwrap(),
            |s| s.parse().unwrap(),
        );
        deposits += c["deposits"].as_u64().unwrap();
        let onchain = &c["onchain"];
        let total_claimed: u128 = onchain["totalClaimed"].as_str().unwrap().parse().unwrap();
        let balance: u128 = onchain["balance"].as_str().unwrap().parse().unwrap();
        // The refund claimed exactly what we charged and returned the rest.
        assert_eq!(total_claimed, charged, "{c:#}");
        assert_eq!(balance, charged, "{c:#}");
    }
    assert!(deposits > 3, "expected top-ups: {summary:#}");
    // Every channel was refunded in full, so the server forgot them all.
    assert!(server.engine.ledger().is_empty());
    eprintln!(
        "stock client → our server: 120 requests, {deposits} deposits, 3 refunds in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

/// Issue 10, 6.1: a first request whose handler fails after its deposit was executed. The
/// answer carries the deposit's receipt (charged 0); the stock client takes it in and pays
/// the next requests with plain vouchers, so there is exactly one deposit on chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_learns_of_a_deposit_whose_request_failed() {
    let chain = Chain::start(&[6]).await;
    let server = OurServer::start(&chain, 1000).await;
    let summary = stock_client(
        &chain,
        &server,
        "anvil:6",
        6,
        &["--first-status", "500"],
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(summary["ok"], true, "{summary:#}");
    let c = &summary["channels"][0];
    assert_eq!(c["failedFirst"]["status"], 500, "{c:#}");
    assert_eq!(c["deposits"], 1, "one deposit, not two: {c:#}");
    let deposited: u128 = c["deposited"].as_str().unwrap().parse().unwrap();
    let balance: u128 = c["onchain"]["balance"].as_str().unwrap().parse().unwrap();
    assert_eq!(balance, deposited, "{c:#}");
    assert_eq!(c["paidAttempts"], 6, "no retried payment: {c:#}");
}
