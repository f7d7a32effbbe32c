//! `x402-upto mcp`, the example paid MCP server, as a child process on anvil: our MCP client
//! pays `word_count` over stdio (extension binding), then, after a restart on the same store,
//! over streamable HTTP (tool-result binding), on one channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::sync::Arc;

use rmcp::ServiceExt;
use rmcp::model::{ClientConfig, JsonObject};
use serde_json::json;
use x402_upto::client::{ClientConfig as PayConfig, PayingClient};
use x402_upto::mcp::{McpPayingClient, paying_client_config};
use x402_upto_testkit::interop::Chain;

use super::serve_process::{BIN, hex_key, write_config};

fn text(t: &str) -> Option<JsonObject> {
    json!({ "text": t }).as_object().cloned()
}

/// `x402-upto mcp --config config` with the relayer and receiver-authorizer keys and `extra`
/// arguments, its stdin and stdout piped (the stdio transport); killed on drop.
fn spawn(chain: &Chain, config: &std::path::Path, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .args(["mcp", "--config"])
        .arg(config)
        .args(["--unit-price", "10", "--max-price", "10000"])
        .args(extra)
        .env("X402_RELAYER_KEY", hex_key(&chain.net.key(1).unwrap()))
        .env(
            "X402_RECEIVER_AUTHORIZER_KEY",
            hex_key(&chain.net.key(2).unwrap()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mcp_server_is_paid_over_stdio_then_streamable_http_on_one_channel() {
    let chain = Chain::plain(&[3]).await;
    let dir = tempfile::tempdir().unwrap();
    // anvil mines only on transactions: no blocks would come to confirm a deposit.
    let (config, _) = write_config(
        &chain,
        dir.path(),
        "http://127.0.0.1:9",
        "[deposits]\nconfirmations = 0\n",
    );
    let payer = Arc::new(PayingClient::new(
        PayConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(dir.path().join("payer")),
    ));

    // stdio: the client starts the server and speaks on its stdin/stdout.
    let mut child = spawn(&chain, &config, &[]);
    let io = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let session = paying_client_config().serve(io).await.unwrap();
    let mcp = McpPayingClient::new(payer.clone(), session.peer().clone());
    let r = mcp
        .call_tool("word_count", text("one two three"))
        .await
        .unwrap();
    assert_eq!(r.result.content[0].as_text().unwrap().text, "3");
    assert_eq!(r.charged(), Some(30));
    assert_eq!(r.settle.as_ref().unwrap().amount.as_deref(), Some("100000"));
    let r = mcp
        .call_tool("word_count", text("a b c d e"))
        .await
        .unwrap();
    assert_eq!(r.charged(), Some(50));
    let free = mcp.call_tool("price_list", None).await.unwrap();
    assert!(free.settle.is_none());
    assert!(
        free.result.content[0]
            .as_text()
            .unwrap()
            .text
            .contains("perWord")
    );
    // The peer hangs up: the server stops (and releases its store).
    drop(mcp);
    session.cancel().await.unwrap();
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .expect("the stdio server stops when its client leaves")
        .unwrap();
    assert!(status.success(), "{status}");

    // Streamable HTTP on the same store: the channel is restored and paid on.
    let port = x402_upto_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _child = spawn(&chain, &config, &["--listen", &listen]);
    let url = format!("http://{listen}/mcp");
    let mut session = None;
    for _ in 0..200 {
        let transport = rmcp::transport::StreamableHttpClientTransport::from_uri(url.clone());
        if let Ok(s) = ClientConfig::default().serve(transport).await {
            session = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let session = session.expect("the HTTP server came up");
    let mcp = McpPayingClient::new(payer.clone(), session.peer().clone());
    let r = mcp.call_tool("word_count", text("x y")).await.unwrap();
    assert_eq!(r.charged(), Some(20));
    let channels = payer.channels();
    assert_eq!(channels.len(), 1);
    assert_eq!(channels[0].charged, 100);
    assert_eq!(
        r.settle
            .unwrap()
            .extra
            .unwrap()
            .channel_state
            .unwrap()
            .charged_cumulative_amount,
        Some(100)
    );
}
