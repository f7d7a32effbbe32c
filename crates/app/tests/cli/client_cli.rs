//! The `x402-upto` binary end to end on anvil: `serve` in front of an upstream, `get` paying
//! through it, `channel status`, `channel refund`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use axum::Router;
use axum::routing::get;
use serde_json::Value;
use support::Chain;
use tokio::process::Command;

use crate::serve_process::{self, BIN, hex_key};

fn assert_succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_get_status_and_refund_through_the_binary() {
    let chain = Chain::plain(&[3]).await;
    let app = Router::new().route(
        "/v1/answer",
        get(|| async { ([("x-upto-charge", "420")], "42") }),
    );
    let (upstream, _) = support::serve_local(app).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = serve_process::write_config(
        &chain,
        dir.path(),
        &upstream,
        r#"[[route]]
prefix = "/v1/"
price = 1000
# anvil mines only on transactions: no blocks would come to confirm a deposit.
[deposits]
confirmations = 0
"#,
    );
    let _server = serve_process::spawn(&chain, &config);
    let url = format!("http://127.0.0.1:{port}/v1/answer");
    serve_process::answers(&url, 200).await;
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
    // Every command names the contracts and pays from anvil:3 with its state in `dir`.
    let run = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.args(args).args(&contracts).envs(payer.clone());
        c
    };
    for _ in 0..3 {
        let out = run(&["get", &url]).output().await.unwrap();
        assert_succeeded(&out);
        assert_eq!(out.stdout, b"42");
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(summary.contains("\"chargedAmount\":\"420\""), "{summary}");
    }
    let out = run(&["channel", "status"]).output().await.unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status[0]["charged"], "1260");
    let out = run(&["channel", "refund", &url]).output().await.unwrap();
    assert_succeeded(&out);
    let refund: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(refund["success"], true);
    assert_eq!(refund["amount"], "8740");
}
