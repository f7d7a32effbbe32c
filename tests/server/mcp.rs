//! Paid MCP tools (`x402_upto::mcp`): our MCP client pays a sequence of tool calls on anvil,
//! from the same channel as its HTTP requests, in both bindings, and what was acknowledged is
//! what the escrow pays out; bad payments in `_meta` are refused with their reason and change
//! nothing; a failing tool charges nothing; a refused settlement returns no tool output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientConfig, ClientRequest, JsonObject,
    RequestMetaObject, ServerCapabilities, ServerConfig, ServerResult,
};
use rmcp::service::{Peer, RoleClient, RunningService};
use rmcp::{ErrorData, ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde_json::{Value, json};
use x402_upto::client::{ClientConfig as PayConfig, PayingClient};
use x402_upto::mcp::{
    McpPayingClient, PAYMENT_META, PAYMENT_RESPONSE_META, PaidTools, ToolPrice,
    paying_client_config, payment_required_of,
};
use x402_upto::server::Charge;
use x402_upto::store::Store;
use x402_upto_testkit::fixture::{Fixture, PRICE};
use x402_upto_testkit::interop::{Chain, OurServer};

/// The tools behind the paywall: `search` charges its `charge` argument (the full price when
/// absent), `fail` is a tool error, `boom` a JSON-RPC error, `overcharge` reports more than the
/// maximum, `echo` is free. `runs` counts the paid tools' executions.
#[derive(Clone)]
struct Tools {
    runs: Arc<AtomicUsize>,
    #[allow(dead_code)] // read by the `tool_handler` expansion
    tool_router: ToolRouter<Self>,
}

impl Tools {
    fn new() -> Self {
        Self {
            runs: Arc::default(),
            tool_router: Self::tool_router(),
        }
    }
}

#[tool_router]
impl Tools {
    #[tool(description = "Searches; charges `charge` units (default: the full price)")]
    async fn search(&self, Extension(charge): Extension<Charge>, args: JsonObject) -> String {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = args.get("charge").and_then(Value::as_u64) {
            charge.set(u128::from(c));
        }
        format!(
            "results for {}",
            args.get("q").and_then(Value::as_str).unwrap_or("?")
        )
    }

    #[tool(description = "Fails as a tool (isError)")]
    async fn fail(&self) -> Result<String, String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err("upstream down".into())
    }

    #[tool(description = "Fails with a JSON-RPC error")]
    async fn boom(&self) -> Result<String, ErrorData> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err(ErrorData::internal_error("boom", None))
    }

    #[tool(description = "Reports more than its maximum")]
    async fn overcharge(&self, Extension(charge): Extension<Charge>) -> String {
        self.runs.fetch_add(1, Ordering::SeqCst);
        charge.set(charge.max() + 1);
        "secret output".into()
    }

    #[tool(description = "Free")]
    async fn echo(&self, args: JsonObject) -> String {
        Value::Object(args).to_string()
    }
}

#[tool_handler]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// `tools` with every paid tool priced up to `price`, on `engine`.
fn paid<S: Store + 'static>(
    tools: Tools,
    engine: x402_upto::engine::Engine<S>,
    price: u128,
) -> PaidTools<Tools, S> {
    let mut p = PaidTools::new(tools, engine);
    for name in ["search", "fail", "boom", "overcharge"] {
        p = p.price(
            name,
            ToolPrice::up_to(price)
                .with_description(format!("x402-upto test tool {name}"))
                .with_mime_type("text/plain"),
        );
    }
    p
}

/// Serves `server` on an in-process pipe; the client session with `config` on the other end.
async fn session<S: Store + 'static>(
    server: PaidTools<Tools, S>,
    config: ClientConfig,
) -> RunningService<RoleClient, ClientConfig> {
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let running = server.serve(server_io).await.unwrap();
        let _ = running.waiting().await;
    });
    config.serve(client_io).await.unwrap()
}

/// The JSON-RPC lines of a session, in order, with their direction.
type Wire = Arc<parking_lot::Mutex<Vec<(&'static str, String)>>>;

/// [`session`] with every line between client and server recorded in `wire`.
async fn tapped_session<S: Store + 'static>(
    server: PaidTools<Tools, S>,
    config: ClientConfig,
    wire: &Wire,
) -> RunningService<RoleClient, ClientConfig> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    async fn pump(
        from: impl tokio::io::AsyncRead + Unpin,
        mut to: impl tokio::io::AsyncWrite + Unpin,
        direction: &'static str,
        wire: Wire,
    ) {
        let mut lines = tokio::io::BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            wire.lock().push((direction, line.clone()));
            if to.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    }
    let (server_io, server_end) = tokio::io::duplex(1 << 16);
    let (client_io, client_end) = tokio::io::duplex(1 << 16);
    let (client_read, client_write) = tokio::io::split(client_end);
    let (server_read, server_write) = tokio::io::split(server_end);
    tokio::spawn(pump(client_read, server_write, "client", wire.clone()));
    tokio::spawn(pump(server_read, client_write, "server", wire.clone()));
    tokio::spawn(async move {
        let running = server.serve(server_io).await.unwrap();
        let _ = running.waiting().await;
    });
    config.serve(client_io).await.unwrap()
}

fn args(v: Value) -> Option<JsonObject> {
    v.as_object().cloned()
}

/// One raw `tools/call` with `meta` as `_meta`, answered as JSON (a JSON-RPC error as `Err`).
async fn try_call(
    peer: &Peer<RoleClient>,
    name: &str,
    meta: Option<Value>,
) -> Result<Value, rmcp::service::ServiceError> {
    let mut params = CallToolRequestParams::new(name.to_owned());
    params.arguments = args(json!({"q": "x"}));
    if let Some(Value::Object(m)) = meta {
        params.meta = Some(RequestMetaObject::from(m));
    }
    let answer: ServerResult = peer
        .send_request(ClientRequest::CallToolRequest(CallToolRequest::new(params)))
        .await?;
    Ok(serde_json::to_value(answer).unwrap())
}

async fn raw_call(peer: &Peer<RoleClient>, name: &str, meta: Option<Value>) -> Value {
    try_call(peer, name, meta).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_client_pays_tool_calls_from_its_http_channel_and_the_claims_reconcile_on_chain() {
    let chain = Chain::plain(&[3]).await;
    let server = OurServer::start(&chain, 1000).await;
    let start = chain
        .net
        .balance_of(chain.net.key(3).unwrap().address())
        .await
        .unwrap();
    let tools = Tools::new();
    let runs = tools.runs.clone();
    let server_mcp = paid(tools, server.engine.clone(), 1000);
    let dir = tempfile::tempdir().unwrap();
    let payer = Arc::new(PayingClient::new(
        PayConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(dir.path()),
    ));
    // Two sessions on one payer: the tool-result binding (a client without the extension)
    // and the extension binding.
    let wire = Wire::default();
    let plain = tapped_session(server_mcp.clone(), ClientConfig::default(), &wire).await;
    let extended = tapped_session(server_mcp.clone(), paying_client_config(), &wire).await;
    let by_result = McpPayingClient::new(payer.clone(), plain.peer().clone());
    let by_extension = McpPayingClient::new(payer.clone(), extended.peer().clone());

    // The first call opens the channel with a deposit (the extension binding's answer).
    let first = by_extension
        .call_tool("search", args(json!({"q": "rust", "charge": 250})))
        .await
        .unwrap();
    assert_eq!(first.charged(), Some(250));
    assert_eq!(
        first.settle.as_ref().unwrap().amount.as_deref(),
        Some("10000")
    );
    let text = first.result.content[0].as_text().unwrap().text.clone();
    assert_eq!(text, "results for rust");
    let mut acknowledged = 250u128;

    // A sequence over both sessions and HTTP: one channel, one cumulative.
    for i in 0..12u64 {
        let charge = (i * 131) % 1000;
        let client = if i % 2 == 0 {
            &by_result
        } else {
            &by_extension
        };
        let r = client
            .call_tool("search", args(json!({"q": "x", "charge": charge})))
            .await
            .unwrap();
        assert_eq!(r.charged(), Some(u128::from(charge)));
        acknowledged += u128::from(charge);
        if i % 4 == 3 {
            let a = payer
                .get(&format!("{}?charge=17", server.url))
                .await
                .unwrap();
            assert_eq!(a.charged(), Some(17));
            acknowledged += 17;
        }
    }
    // No charge argument: the full price.
    let full = by_result
        .call_tool("search", args(json!({"q": "all"})))
        .await
        .unwrap();
    assert_eq!(full.charged(), Some(1000));
    acknowledged += 1000;

    // A failing tool (both kinds) and a free one charge nothing.
    let failed = by_result.call_tool("fail", None).await.unwrap();
    assert_eq!(failed.result.is_error, Some(true));
    assert_eq!(failed.charged(), None);
    assert!(by_extension.call_tool("boom", None).await.is_err());
    let free = by_result
        .call_tool("echo", args(json!({"a": 1})))
        .await
        .unwrap();
    assert!(free.settle.is_none());

    // A client that lost its state recovers from the corrective answer (our own signature
    // over the server's charge) and pays on the same channel.
    let empty = tempfile::tempdir().unwrap();
    let amnesiac = Arc::new(PayingClient::new(
        PayConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(empty.path()),
    ));
    let recovered = McpPayingClient::new(amnesiac.clone(), plain.peer().clone())
        .call_tool("search", args(json!({"q": "again", "charge": 9})))
        .await
        .unwrap();
    assert_eq!(recovered.charged(), Some(9));
    acknowledged += 9;
    assert_eq!(amnesiac.channels()[0].charged, acknowledged);
    // The original client catches up through the same corrective path.
    let r = by_result
        .call_tool("search", args(json!({"q": "x", "charge": 1})))
        .await
        .unwrap();
    assert_eq!(r.charged(), Some(1));
    acknowledged += 1;

    // The extension binding was used where advertised, the tool-result binding elsewhere.
    let lines = wire.lock().clone();
    let answers: Vec<Value> = lines
        .iter()
        .filter(|(d, _)| *d == "server")
        .map(|(_, l)| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    assert!(
        answers
            .iter()
            .any(|a| a["result"]["resultType"] == "payment_required")
    );
    assert!(answers.iter().any(|a| a["result"]["isError"] == json!(true)
        && a["result"]["structuredContent"]["x402Version"] == json!(2)));
    if let Ok(path) = std::env::var("X402_MCP_CAPTURE") {
        // Documentation: the real messages of this run (docs/protocol.md, "MCP").
        let text: Vec<String> = lines.iter().map(|(d, l)| format!("{d} {l}")).collect();
        std::fs::write(path, text.join("\n")).unwrap();
    }

    let channels = payer.channels();
    assert_eq!(channels.len(), 1, "HTTP and MCP pay from one channel");
    let channel = &channels[0];
    assert_eq!(channel.charged, acknowledged);
    let id = channel.channel_id;
    assert_eq!(
        server.engine.ledger().snapshot(&id).unwrap().charged,
        acknowledged
    );
    assert_eq!(runs.load(Ordering::SeqCst), 13 + 1 + 2 + 2);

    // Claimed on chain == what the client was told it paid, to the unit.
    let escrow = chain.escrow_client();
    escrow
        .claim(&server.engine.ledger().claimable())
        .await
        .unwrap();
    let onchain = escrow.channel_state(id).await.unwrap();
    assert_eq!(onchain.total_claimed, acknowledged);
    assert_eq!(onchain.balance, 10_000);

    // The unspent deposit comes back through a tool call (the tool does not run): the payer
    // is out exactly what it was told it paid.
    let before_refund = runs.load(Ordering::SeqCst);
    let refund = by_extension.refund("search", None).await.unwrap();
    assert!(refund.success);
    assert_eq!(refund.amount, Some((10_000 - acknowledged).to_string()));
    assert_eq!(runs.load(Ordering::SeqCst), before_refund);
    assert!(payer.channels().is_empty());
    assert_eq!(
        chain
            .net
            .balance_of(chain.net.key(3).unwrap().address())
            .await
            .unwrap(),
        start - acknowledged
    );
}

/// A Fixture engine (chain double) with a funded channel of the fixture's payer, the paid
/// tools on it and a raw session (tool-result binding) to send hand-made `_meta`.
async fn raw_rig() -> (
    Fixture,
    Arc<AtomicUsize>,
    RunningService<RoleClient, ClientConfig>,
) {
    let f = Fixture::new().await;
    let tools = Tools::new();
    let runs = tools.runs.clone();
    let s = session(
        paid(tools, f.engine.clone(), PRICE),
        ClientConfig::default(),
    )
    .await;
    (f, runs, s)
}

fn meta(payment: Value) -> Option<Value> {
    Some(json!({ PAYMENT_META: payment }))
}

/// The reason code of a payment-required answer (either binding).
fn reason(answer: &Value) -> String {
    payment_required_of(answer)
        .unwrap_or_else(|| panic!("not a payment-required answer: {answer:#}"))
        .error
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_payments_in_meta_are_refused_with_their_reason_and_change_nothing() {
    let (f, runs, s) = raw_rig().await;
    let config = f.config(1);
    f.fund(&config, 100_000);
    let before = f.state().await;

    // No payment: the offer, for `mcp://tool/search`, in both places the binding names.
    let a = raw_call(s.peer(), "search", None).await;
    assert_eq!(a["isError"], json!(true));
    assert_eq!(
        a["structuredContent"]["resource"]["url"],
        "mcp://tool/search"
    );
    let text: Value = serde_json::from_str(a["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text, a["structuredContent"]);
    // The same call advertising the extension in its own `_meta`: the extension binding.
    let caps = json!({"io.modelcontextprotocol/clientCapabilities":
                      {"extensions": {"org.x402/payment": {}}}});
    let a = raw_call(s.peer(), "search", Some(caps)).await;
    assert_eq!(a["resultType"], "payment_required", "{a:#}");
    assert_eq!(a["paymentRequired"]["resource"]["url"], "mcp://tool/search");

    // Malformed payments.
    for (payment, expected) in [
        (json!("not an object"), "invalid_payload"),
        (json!({"x402Version": 2}), "invalid_payload"),
        (
            json!({"x402Version": 1, "payload": {}}),
            "invalid_x402_version",
        ),
        (json!([1, 2, 3]), "invalid_payload"),
        (
            json!({"x402Version": 2, "accepted": {}, "payload": "x".repeat(20_000)}),
            "invalid_payload",
        ),
    ] {
        let a = raw_call(s.peer(), "search", meta(payment.clone())).await;
        assert_eq!(reason(&a), expected, "{payment}");
    }
    // The wrong network.
    let mut p = f.voucher_payload(&config, PRICE);
    p["accepted"]["network"] = json!("eip155:1");
    let a = raw_call(s.peer(), "search", meta(p)).await;
    assert_eq!(reason(&a), "invalid_batch_settlement_evm_network_mismatch");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(f.state().await, before);

    // A voucher pays once; replayed, it is refused with the corrective state, and the tool
    // does not run again.
    let p = f.voucher_payload(&config, PRICE);
    let a = raw_call(s.peer(), "search", meta(p.clone())).await;
    assert_eq!(a["_meta"][PAYMENT_RESPONSE_META]["success"], json!(true));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let paid_state = f.state().await;
    let a = raw_call(s.peer(), "search", meta(p)).await;
    assert_eq!(
        reason(&a),
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    let offer = &payment_required_of(&a).unwrap().accepts[0];
    let state = &offer.extra["channelState"];
    assert_eq!(state["chargedCumulativeAmount"], json!(PRICE.to_string()));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(f.state().await, paid_state);
}

#[tokio::test]
async fn a_failing_tool_charges_nothing_and_a_refused_settlement_returns_no_output() {
    let (f, runs, s) = raw_rig().await;
    let config = f.config(1);
    let id = f.fund(&config, 100_000);

    // A tool error: the tool's own error result, no receipt, nothing charged.
    let a = raw_call(s.peer(), "fail", meta(f.voucher_payload(&config, PRICE))).await;
    assert_eq!(a["isError"], json!(true));
    assert_eq!(a["content"][0]["text"], "upstream down");
    assert!(a.get("_meta").is_none(), "{a:#}");
    // (The call loaded the channel from the chain: the state to keep starts here.)
    let before = f.state().await;
    assert_eq!(f.engine.ledger().snapshot(&id).unwrap().charged, 0);
    // A JSON-RPC error from the tool: passed on, nothing charged.
    let err = try_call(s.peer(), "boom", meta(f.voucher_payload(&config, PRICE)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("boom"), "{err}");
    // A charge above the maximum: settlement refused, the tool's output withheld, the failed
    // receipt and the offer again.
    let a = raw_call(
        s.peer(),
        "overcharge",
        meta(f.voucher_payload(&config, PRICE)),
    )
    .await;
    assert_eq!(
        reason(&a),
        "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative"
    );
    assert!(!a.to_string().contains("secret output"), "{a:#}");
    assert_eq!(a["_meta"][PAYMENT_RESPONSE_META]["success"], json!(false));
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(f.state().await, before, "nothing charged");

    // The same voucher still pays (nothing was charged meanwhile).
    let a = raw_call(s.peer(), "search", meta(f.voucher_payload(&config, PRICE))).await;
    assert_eq!(
        a["_meta"][PAYMENT_RESPONSE_META]["extra"]["chargedAmount"],
        json!(PRICE.to_string())
    );
}

#[tokio::test]
async fn a_deposit_with_a_failing_tool_is_credited_and_its_receipt_charges_nothing() {
    let (f, runs, s) = raw_rig().await;
    let config = f.config(2);
    let id = f.id(&config);
    let a = raw_call(
        s.peer(),
        "fail",
        meta(f.deposit_payload(&config, PRICE, 5_000)),
    )
    .await;
    assert_eq!(a["isError"], json!(true));
    assert_eq!(a["content"][0]["text"], "upstream down");
    let receipt = &a["_meta"][PAYMENT_RESPONSE_META];
    assert_eq!(receipt["success"], json!(true));
    assert_eq!(receipt["extra"]["chargedAmount"], json!("0"));
    assert_eq!(receipt["amount"], json!("5000"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let snap = f.engine.ledger().snapshot(&id).unwrap();
    assert_eq!((snap.balance, snap.charged), (5_000, 0));
}

/// Concurrent calls on one channel: the server holds the channel for one call at a time
/// (`channel_busy` to the others), the client waits and re-signs; every charge the client was
/// told of is on chain after a claim, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tool_calls_on_one_channel_all_pay_and_reconcile() {
    let chain = Chain::plain(&[3]).await;
    let server = OurServer::start(&chain, 1000).await;
    let server_mcp = paid(Tools::new(), server.engine.clone(), 1000);
    let payer = Arc::new(PayingClient::new(
        PayConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    ));
    let s = session(server_mcp, paying_client_config()).await;
    let client = Arc::new(McpPayingClient::new(payer.clone(), s.peer().clone()));
    // The channel exists before the burst (a first deposit is not raced).
    let first = client
        .call_tool("search", args(json!({"charge": 5})))
        .await
        .unwrap();
    let mut acknowledged = first.charged().unwrap();
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut sum = 0u128;
            for i in 0..5u64 {
                let charge = 10 * t + i + 1;
                let r = client
                    .call_tool("search", args(json!({"charge": charge})))
                    .await
                    .unwrap();
                assert_eq!(r.charged(), Some(u128::from(charge)));
                sum += u128::from(charge);
            }
            sum
        }));
    }
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    let channel = &payer.channels()[0];
    assert_eq!(channel.charged, acknowledged);
    let id = channel.channel_id;
    assert_eq!(
        server.engine.ledger().snapshot(&id).unwrap().charged,
        acknowledged
    );
    let escrow = chain.escrow_client();
    escrow
        .claim(&server.engine.ledger().claimable())
        .await
        .unwrap();
    assert_eq!(
        escrow.channel_state(id).await.unwrap().total_claimed,
        acknowledged
    );
}
