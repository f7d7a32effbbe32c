//! Our Rust client pays the stock `@x402/express` batch-settlement server on anvil: gasless
//! deposits and top-ups, vouchers with varying charges, a client that lost its state resyncing
//! from the stock server's corrective 402, and the cooperative refund.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "interop_support/mod.rs"]
mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Chain, interop_dir};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use x402_upto::client::{ClientConfig, PayingClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pays_the_stock_server_and_refunds() {
    let t0 = Instant::now();
    let chain = Chain::start(&[3, 4]).await;
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
    let paid = ready["paid"].as_str().unwrap().to_owned();
    let base = ready["url"].as_str().unwrap().to_owned();

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
