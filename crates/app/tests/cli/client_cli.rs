//! The `x402-upto` binary end to end on anvil: `serve` in front of an upstream, `get` paying
//! through it, `channel status`, `channel refund`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use support::Chain;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_x402-upto");

fn hex_key(k: &alloy::signers::local::PrivateKeySigner) -> String {
    format!("0x{}", hex::encode(k.to_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_get_status_and_refund_through_the_binary() {
    let chain = Chain::plain(&[3]).await;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", l.local_addr().unwrap());
    let app = Router::new().route(
        "/v1/answer",
        get(|| async { ([("x-upto-charge", "420")], "42") }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        chain.serve_toml(
            &format!("127.0.0.1:{port}"),
            &upstream,
            &dir.path().join("store").display().to_string(),
        ) + r#"[[route]]
prefix = "/v1/"
price = 1000
# anvil mines only on transactions: no blocks would come to confirm a deposit.
[deposits]
confirmations = 0
"#,
    )
    .unwrap();
    let _server = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("X402_RELAYER_KEY", hex_key(&chain.net.key(1).unwrap()))
        .env(
            "X402_RECEIVER_AUTHORIZER_KEY",
            hex_key(&chain.net.key(2).unwrap()),
        )
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/answer");
    for _ in 0..200 {
        if reqwest::get(&url).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let payer = [
        ("X402_PAYER_KEY", hex_key(&chain.net.key(3).unwrap())),
        (
            "X402_STATE_DIR",
            dir.path().join("channels").display().to_string(),
        ),
    ];
    let contracts = [
        "--escrow".to_owned(),
        chain.escrow.to_string(),
        "--collector".to_owned(),
        chain.collector.to_string(),
    ];
    let run = |args: Vec<String>| {
        let mut c = Command::new(BIN);
        c.args(args).envs(payer.clone());
        c
    };
    for _ in 0..3 {
        let out = run([vec!["get".to_owned(), url.clone()], contracts.to_vec()].concat())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"42");
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("\"chargedAmount\":\"420\""), "{summary}");
    }
    let out = run([
        vec!["channel".to_owned(), "status".to_owned()],
        contracts.to_vec(),
    ]
    .concat())
    .output()
    .await
    .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["charged"], "1260");
    let out = run([
        vec!["channel".to_owned(), "refund".to_owned(), url.clone()],
        contracts.to_vec(),
    ]
    .concat())
    .output()
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refund: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refund["success"], true);
    assert_eq!(refund["amount"], "8740");
}
