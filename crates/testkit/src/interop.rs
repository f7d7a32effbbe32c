//! Shared setup of the interop tests: anvil with the contracts at the stock SDK's canonical
//! addresses (through `interop/chain.mjs deploy`), funded payers, our server on a real port,
//! and running the Node scripts as child processes.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::devnet::{Devnet, TOKEN_NAME, TOKEN_VERSION};
use alloy_primitives::Address;
use axum::extract::Query;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;
use tokio::process::Command;
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::engine::{ChainAccess, Engine, EngineConfig};
use x402_upto::server::{Charge, PaymentLayer};
use x402_upto::typed_data::EscrowDomain;
use x402_upto::wire::Eip155Network;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};

pub fn interop_dir() -> PathBuf {
    crate::workspace_root().join("interop")
}

/// Fails (never skips) when the Node harness is not installed.
pub fn require_node_modules() {
    let dir = interop_dir().join("node_modules/@x402/evm");
    assert!(
        dir.is_dir(),
        "interop/node_modules is missing: run `bash interop/setup.sh` first (needs node >= 20)"
    );
}

/// Runs a Node script from `interop/` and returns its stdout (the last JSON line), failing
/// with its stderr tail when it exits non-zero.
pub async fn node(args: &[&str], timeout: Duration) -> Value {
    let out = tokio::time::timeout(
        timeout,
        Command::new("node")
            .args(args)
            .current_dir(interop_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("node {args:?} timed out"))
    .expect("node is installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(['{', '[']));
    let value = last.and_then(|l| serde_json::from_str(l).ok());
    match value {
        Some(v) if out.status.success() => v,
        _ => {
            let tail: String = stderr
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!(
                "node {args:?} failed ({}):\nstdout: {stdout}\nstderr tail:\n{tail}",
                out.status
            )
        }
    }
}

/// Anvil with the canonical install; `payers` are funded with 1,000,000 USDC each.
pub struct Chain {
    pub net: Devnet,
    pub rpc: String,
    pub token: Address,
    pub escrow: Address,
    pub collector: Address,
}

impl Chain {
    pub async fn start(payers: &[usize]) -> Self {
        require_node_modules();
        let net = Devnet::start().await.expect("anvil (run scripts/tools.sh)");
        let rpc = net.endpoint_url().to_string();
        let rpc = rpc.trim_end_matches('/').to_owned();
        let d = node(
            &["chain.mjs", "deploy", "--rpc", &rpc, "--key", "anvil:0"],
            Duration::from_secs(60),
        )
        .await;
        let addr = |k: &str| d[k].as_str().unwrap().parse::<Address>().unwrap();
        let token = addr("token");
        let to: Vec<String> = payers
            .iter()
            .map(|i| net.key(*i).unwrap().address().to_string())
            .collect();
        let token_s = token.to_string();
        node(
            &[
                "chain.mjs",
                "fund",
                "--rpc",
                &rpc,
                "--key",
                "anvil:0",
                "--token",
                &token_s,
                "--to",
                &to.join(","),
            ],
            Duration::from_secs(60),
        )
        .await;
        Self {
            rpc,
            token,
            escrow: addr("escrow"),
            collector: addr("collector"),
            net,
        }
    }

    /// Anvil with the project's own deployment only (no Node, non-canonical addresses).
    pub async fn plain(payers: &[usize]) -> Self {
        let net = Devnet::start().await.expect("anvil (run scripts/tools.sh)");
        for i in payers {
            net.mint(net.key(*i).unwrap().address(), 1_000_000_000)
                .await
                .unwrap();
        }
        let rpc = net
            .endpoint_url()
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        Self {
            rpc,
            token: net.token,
            escrow: net.escrow,
            collector: net.collector,
            net,
        }
    }

    pub fn domain(&self) -> EscrowDomain {
        EscrowDomain::new(self.net.chain_id, self.escrow)
    }

    /// The head of a `serve` TOML file for our server on this chain (listener, upstream, RPC,
    /// contracts, asset, receiver anvil:7, store); top-level keys, then tables, go after it.
    pub fn serve_toml(&self, listen: &str, upstream: &str, store: &str) -> String {
        format!(
            r#"listen = "{listen}"
upstream = "{upstream}"
rpc = "{rpc}"
chain_id = {chain_id}
escrow = "{escrow}"
collector = "{collector}"
asset = "{token}"
asset_name = "USDC"
asset_version = "2"
pay_to = "{pay_to}"
store = "{store}"
"#,
            rpc = self.rpc,
            chain_id = self.net.chain_id,
            escrow = self.escrow,
            collector = self.collector,
            token = self.token,
            pay_to = self.net.key(7).unwrap().address(),
        )
    }

    /// Transactions the relayer of [`Chain::escrow_client`] (anvil:1) has sent: its next nonce.
    pub async fn relayer_nonce(&self) -> u64 {
        self.net.nonce(self.net.key(1).unwrap().address()).await
    }

    /// The escrow client our server uses: relayer anvil:1, receiver authorizer anvil:2.
    pub fn escrow_client(&self) -> EscrowClient {
        EscrowClient::new(
            self.net.provider.clone(),
            self.escrow,
            self.collector,
            Arc::new(self.net.tx_sender(self.net.key(1).unwrap())),
            Some(self.net.key(2).unwrap()),
            self.domain(),
        )
    }
}

/// Our server on 127.0.0.1: `/paid` costs up to `price`; the handler charges `?charge=N`,
/// or a varying amount in [1, price] otherwise.
pub struct OurServer {
    pub url: String,
    pub engine: Engine<SledStore>,
    pub dir: tempfile::TempDir,
    pub task: tokio::task::JoinHandle<()>,
}

#[derive(serde::Deserialize)]
struct Q {
    charge: Option<u64>,
    /// Fail with this status (nothing charged), as a broken upstream would.
    status: Option<u16>,
}

impl OurServer {
    pub async fn start(chain: &Chain, price: u128) -> Self {
        Self::start_with(chain, price, Arc::new(chain.escrow_client())).await
    }

    /// Like [`Self::start`], over any chain access (e.g. an escrow client that waits for
    /// deposit confirmations).
    pub async fn start_with(chain: &Chain, price: u128, access: Arc<dyn ChainAccess>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group)).unwrap(),
        );
        let config = EngineConfig {
            network: Eip155Network(chain.net.chain_id),
            pay_to: chain.net.key(7).unwrap().address(),
            asset: chain.token,
            asset_name: TOKEN_NAME.into(),
            asset_version: TOKEN_VERSION.into(),
            receiver_authorizer: chain.net.key(2).unwrap().address(),
            withdraw_delay: 900,
            max_timeout_seconds: 300,
            extra: Default::default(),
        };
        let engine = Engine::new(config, Ledger::new(chain.domain()), store, Some(access)).unwrap();
        let counter = Arc::new(AtomicU64::new(0));
        let handler = move |Extension(charge): Extension<Charge>, Query(q): Query<Q>| {
            let counter = counter.clone();
            async move {
                use axum::response::IntoResponse;
                if let Some(code) = q.status {
                    let code = axum::http::StatusCode::from_u16(code).unwrap();
                    return (code, "failing as asked").into_response();
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let max = u64::try_from(charge.max()).unwrap_or(u64::MAX).max(1);
                let c = q.charge.unwrap_or((n * 7919) % max + 1);
                charge.set(u128::from(c));
                axum::Json(serde_json::json!({"requestedCharge": c.to_string()})).into_response()
            }
        };
        let app = Router::new().route(
            "/paid",
            get(handler).layer(
                PaymentLayer::fixed(engine.clone(), price)
                    .with_description("x402-upto interop: metered resource")
                    .with_mime_type("application/json"),
            ),
        );
        let (base, task) = serve_local(app).await;
        let url = format!("{base}/paid");
        Self {
            url,
            engine,
            dir,
            task,
        }
    }
}

/// Serves `app` on a free port of 127.0.0.1: its base URL (`http://ip:port`) and the task.
pub async fn serve_local(app: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, task)
}

/// A server whose `PAYMENT-RESPONSE` charges 50× its offer of 100 on `/paid` (the client
/// must catch it). Its URL, and how many paid requests reached it.
pub async fn overcharging_server(
    asset: Address,
    pay_to: Address,
    receiver_authorizer: Address,
) -> (String, Arc<AtomicUsize>) {
    use axum::response::IntoResponse;
    use serde_json::json;
    use x402_upto::wire::encode_header;

    let offer = json!({"scheme": "batch-settlement", "network": "eip155:31337", "amount": "100",
        "asset": asset, "payTo": pay_to, "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2", "receiverAuthorizer": receiver_authorizer,
                  "withdrawDelay": 900}});
    let required = encode_header(
        &json!({"x402Version": 2, "resource": {"url": "http://x/paid"}, "accepts": [offer]}),
    );
    let paid = Arc::new(AtomicUsize::new(0));
    let counter = paid.clone();
    let app = Router::new().route(
        "/paid",
        get(move |headers: axum::http::HeaderMap| {
            let required = required.clone();
            let counter = counter.clone();
            async move {
                if headers.get("payment-signature").is_none() {
                    return (axum::http::StatusCode::PAYMENT_REQUIRED, [("PAYMENT-REQUIRED", required)], "").into_response();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let forged = encode_header(&json!({"success": true, "transaction": "", "network": "eip155:31337",
                    "amount": "100000", "extra": {"chargedAmount": "5000", "channelState": {
                    "channelId": format!("0x{}", "00".repeat(32)), "balance": "100000", "totalClaimed": "0",
                    "withdrawRequestedAt": 0, "refundNonce": "0", "chargedCumulativeAmount": "5000"}}}));
                (axum::http::StatusCode::OK, [("PAYMENT-RESPONSE", forged)], "ok").into_response()
            }
        }),
    );
    let (base, _) = serve_local(app).await;
    (format!("{base}/paid"), paid)
}
