//! Our Rust client pays the stock `@x402/express` batch-settlement server on anvil: gasless
//! deposits and top-ups, vouchers with varying charges, a client that lost its state resyncing
//! from the stock server's corrective 402, and the cooperative refund; and, after the stock
//! server restarted without its (in-memory) channels, a client without local state paying
//! again from the chain's `totalClaimed` (the spec's cold start, `x402-upto get --rpc`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use alloy::providers::Provider as _;
use serde_json::Value;
use support::{Chain, interop_dir};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};

/// Starts the stock server (in-memory channel storage) on a free port; returns the child,
/// the paid URL and the base URL.
async fn stock_server(chain: &Chain) -> (tokio::process::Child, String, String) {
    let token = chain.token.to_string();
    let mut child = Command::new("node")
        .args([
            "stock-server.mjs",
            "--rpc",
            &chain.rpc,
            "--token",
            &token,
            "--port",
            "0",
            "--price",
            "1000",
        ])
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(json) = line.strip_prefix("READY ") {
                return serde_json::from_str(json).unwrap();
            }
        }
        panic!("stock server exited before READY");
    })
    .await
    .expect("stock server READY within 30 s");
    // Keep reading its stdout, so a later write never meets a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let paid = ready["paid"].as_str().unwrap().to_owned();
    let base = ready["url"].as_str().unwrap().to_owned();
    (child, paid, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pays_the_stock_server_and_refunds() {
    let t0 = Instant::now();
    let chain = Chain::start(&[3, 4]).await;
    let (mut child, paid, base) = stock_server(&chain).await;

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut expected = Vec::new();
    for (k, key) in [3usize, 4].into_iter().enumerate() {
        let c = PayingClient::new(
            ClientConfig::new(chain.net.key(key).unwrap()).with_state_dir(dirs[k].path()),
        );
        let mut charged = 0u128;
        for i in 0..30u128 {
            let charge = (i * 131 + 17) % 1000 + 1;
            let a = c.get(&format!("{paid}?charge={charge}")).await.unwrap();
            assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
            assert_eq!(a.charged(), Some(charge));
            charged += charge;
        }
        let ch = c.channels();
        assert_eq!(ch[0].charged, charged);
        expected.push((ch[0].channel_id, charged));
    }

    // Key 3 loses its state: the stock server's corrective 402 carries our own signature.
    let empty = tempfile::tempdir().unwrap();
    let c = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_state_dir(empty.path()),
    );
    let a = c.get(&format!("{paid}?charge=3")).await.unwrap();
    assert_eq!(a.status, 200);
    expected[0].1 += 3;
    assert_eq!(c.channels()[0].charged, expected[0].1);

    // Refund key 3's channel through the stock server.
    let r = c.refund(&paid, None).await.unwrap();
    assert!(r.success, "{r:?}");
    assert_eq!(r.transaction.len(), 66);

    let stats: Value = reqwest::get(format!("{base}/admin/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (id, charged) in &expected {
        let s = &stats["channels"][id.to_string()];
        assert_eq!(
            s["charged"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| s["charged"].to_string()),
            charged.to_string(),
            "{stats:#}"
        );
    }
    assert_eq!(stats["refundResponses"], 1, "{stats:#}");
    let _ = child.start_kill();
    eprintln!(
        "our client → stock server: 61 paid requests, 1 corrective resync, 1 refund in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_stock_server_restart_a_client_without_state_pays_from_the_chain() {
    let chain = Chain::start(&[3]).await;
    let key = chain.net.key(3).unwrap();
    let (mut child, paid, base) = stock_server(&chain).await;
    let dir = tempfile::tempdir().unwrap();
    let c = PayingClient::new(ClientConfig::new(key.clone()).with_state_dir(dir.path()));
    for _ in 0..5 {
        let a = c.get(&format!("{paid}?charge=600")).await.unwrap();
        assert_eq!(a.charged(), Some(600));
    }
    let id = c.channels()[0].channel_id;
    let res = reqwest::Client::new()
        .post(format!("{base}/admin/claim-and-settle"))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{:?}", res.text().await);
    let escrow = chain.escrow_client();
    let onchain = escrow.channel_state(id).await.unwrap();
    assert_eq!(onchain.total_claimed, 3000);

    // The server restarts (its in-memory channels are gone) and the client's state dir is lost.
    child.kill().await.unwrap();
    let (_child, paid, _) = stock_server(&chain).await;
    drop(dir);
    let facilitator = chain.net.key(1).unwrap().address();
    let nonce = || async {
        chain
            .net
            .provider
            .get_transaction_count(facilitator)
            .await
            .unwrap()
    };
    let (tokens, nonce0) = (
        chain.net.balance_of(key.address()).await.unwrap(),
        nonce().await,
    );

    // Without an RPC the client signs from zero: refused, nothing moves (the finding).
    let lost = tempfile::tempdir().unwrap();
    let c = PayingClient::new(ClientConfig::new(key.clone()).with_state_dir(lost.path()));
    match c.get(&format!("{paid}?charge=100")).await.unwrap_err() {
        ClientError::Refused { status, reason, .. } => {
            assert_eq!(status, 402);
            assert_eq!(
                reason,
                "invalid_batch_settlement_evm_cumulative_below_claimed"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(escrow.channel_state(id).await.unwrap(), onchain);
    assert_eq!(chain.net.balance_of(key.address()).await.unwrap(), tokens);
    assert_eq!(nonce().await, nonce0);

    // `x402-upto get --rpc`: reads the channel, signs above totalClaimed, paid at once with
    // the balance already deposited.
    let lost = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_x402-upto"))
        .args(["get", &format!("{paid}?charge=100"), "--rpc", &chain.rpc])
        .arg("--state-dir")
        .arg(lost.path())
        .env(
            "X402_PAYER_KEY",
            format!("0x{}", hex::encode(key.to_bytes())),
        )
        .output()
        .await
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{summary}");
    assert!(summary.contains("\"chargedAmount\":\"100\""), "{summary}");
    assert!(
        summary.contains("\"chargedCumulativeAmount\":\"3100\""),
        "{summary}"
    );
    assert_eq!(
        chain.net.balance_of(key.address()).await.unwrap(),
        tokens,
        "no new deposit"
    );
    assert_eq!(nonce().await, nonce0, "no transaction");
    let after = escrow.channel_state(id).await.unwrap();
    assert_eq!(
        (after.balance, after.total_claimed),
        (onchain.balance, 3000)
    );
    // And the same client keeps paying from its new local state.
    let c = PayingClient::new(ClientConfig::new(key).with_state_dir(lost.path()));
    let a = c.get(&format!("{paid}?charge=50")).await.unwrap();
    assert_eq!(a.charged(), Some(50));
    assert_eq!(c.channels()[0].charged, 3150);
}
