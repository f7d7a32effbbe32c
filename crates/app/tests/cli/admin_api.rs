//! `serve`'s admin API on anvil, through the binary: the token (none: `serve` does not
//! start; missing or wrong: 401), channels paged and filtered, totals against the chain,
//! and each action's effect: claim now (a claim on chain), sweep now, refund (the channel
//! refunded on chain), block (the next voucher refused, nothing changed; kept across a
//! restart) and unblock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use alloy_primitives::Address;
use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use serde_json::Value;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};
use x402_upto::typed_data::ChannelId;
use x402_upto_testkit::interop::{self as support, Chain};

use crate::serve_process;

pub const TOKEN: &str = "test-admin-token-0123456789abcdef";
const BLOCKED: &str = "invalid_batch_settlement_evm_payer_blocked";

/// `serve` (the binary) on anvil in front of an upstream that charges `n` on `/v1/work/{n}`,
/// with its admin API on a port of its own; claims and sweeps only when asked.
pub struct AdminRig {
    pub chain: Chain,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub server: tokio::process::Child,
    pub proxy: String,
    pub admin: String,
    pub http: reqwest::Client,
}

impl AdminRig {
    pub async fn start(payers: &[usize]) -> Self {
        let chain = Chain::plain(payers).await;
        let app = Router::new().route(
            "/v1/work/{n}",
            get(|Path(n): Path<u64>| async move {
                ([("x-upto-charge", n.to_string())], format!("worked {n}"))
            }),
        );
        let (upstream, _) = support::serve_local(app).await;
        let dir = tempfile::tempdir().unwrap();
        let admin_port = serve_process::free_port();
        let (config, port) = serve_process::write_config(
            &chain,
            dir.path(),
            &upstream,
            &format!(
                r#"min_deposit = "20000"
[[route]]
prefix = "/v1/"
price = 1000
# anvil mines only on transactions: no blocks would come to confirm a deposit.
[deposits]
confirmations = 0
# Claims and sweeps only when the admin API asks.
[settlement]
claim_threshold = "1000000000000"
claim_interval_secs = 86400
settle_interval_secs = 86400
confirmations = 0
[admin]
listen = "127.0.0.1:{admin_port}"
sample_secs = 1
"#
            ),
        );
        let server = spawn(&chain, &config);
        let rig = Self {
            proxy: format!("http://127.0.0.1:{port}"),
            admin: format!("http://127.0.0.1:{admin_port}"),
            chain,
            dir,
            config,
            server,
            http: reqwest::Client::new(),
        };
        rig.wait_up().await;
        rig
    }

    async fn wait_up(&self) {
        assert!(
            serve_process::answers(&format!("{}/", self.admin), 600).await,
            "the admin listener did not come up"
        );
    }

    /// Stops `serve` (SIGTERM, graceful) and starts it again on the same config and store.
    pub async fn restart(&mut self) {
        let pid = self.server.id().unwrap().to_string();
        let kill = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(kill.success());
        tokio::time::timeout(Duration::from_secs(30), self.server.wait())
            .await
            .expect("serve exits after SIGTERM")
            .unwrap();
        self.server = spawn(&self.chain, &self.config);
        self.wait_up().await;
    }

    /// A payer paying through the proxy (state kept in the rig's directory).
    pub fn payer(&self, key: usize) -> PayingClient {
        PayingClient::new(
            ClientConfig::new(self.chain.net.key(key).unwrap())
                .with_contracts(self.chain.escrow, self.chain.collector)
                .with_state_dir(self.dir.path().join(format!("payer-{key}"))),
        )
    }

    pub fn address(&self, key: usize) -> Address {
        self.chain.net.key(key).unwrap().address()
    }

    /// `GET /api{path}` with the token: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/api{path}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /api{path}` with the token.
    pub async fn post(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api{path}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The one channel of payer `key`, as the API shows it.
    pub async fn channel_of(&self, key: usize) -> Value {
        let (status, page) = self
            .get(&format!("/channels?payer={}", self.address(key)))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 1, "{page}");
        page["channels"][0].clone()
    }
}

fn spawn(chain: &Chain, config: &std::path::Path) -> tokio::process::Child {
    serve_process::command(chain, config)
        .env("X402_ADMIN_TOKEN", TOKEN)
        .spawn()
        .unwrap()
}

pub fn address(v: &Value) -> Address {
    v.as_str().unwrap().parse().unwrap()
}

pub fn id_of(channel: &Value) -> ChannelId {
    ChannelId(channel["channel_id"].as_str().unwrap().parse().unwrap())
}

/// Pays `/v1/work/{n}` for each `n` and checks the charge.
pub async fn pay(client: &PayingClient, proxy: &str, charges: &[u64]) {
    for n in charges {
        let a = client.get(&format!("{proxy}/v1/work/{n}")).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.charged(), Some(u128::from(*n)));
    }
}

fn refused_reason(result: Result<x402_upto::client::Answer, ClientError>) -> String {
    match result {
        Err(ClientError::Refused { status, reason, .. }) => {
            assert_eq!(status, 402);
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_pages_totals_and_acts_on_chain() {
    let mut rig = AdminRig::start(&[3, 4]).await;
    let escrow = rig.chain.escrow_client();
    let pay_to = rig.chain.net.key(7).unwrap().address();

    // Auth: no token and a wrong one are 401 with nothing in the body; the page itself
    // (no data in it) needs none.
    let totals_url = format!("{}/api/totals", rig.admin);
    let bare = rig.http.get(&totals_url).send().await.unwrap();
    assert_eq!(bare.status(), 401);
    assert_eq!(
        bare.headers()["www-authenticate"],
        "Bearer realm=\"x402-upto admin\""
    );
    for wrong in [
        "Bearer wrong-token-wrong-token-wrong".to_owned(),
        format!("Bearer {TOKEN}x"),
        TOKEN.to_owned(),
        format!("Basic {TOKEN}"),
    ] {
        let r = rig
            .http
            .get(&totals_url)
            .header("authorization", &wrong)
            .send()
            .await;
        assert_eq!(r.unwrap().status(), 401, "{wrong}");
    }
    assert_eq!(rig.get("/totals").await.0, 200);
    let page = rig.http.get(&rig.admin).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );

    // Two payers pay.
    let (p3, p4) = (rig.payer(3), rig.payer(4));
    pay(&p3, &rig.proxy, &[100, 200, 300]).await;
    pay(&p4, &rig.proxy, &[50, 70]).await;

    // Channels: most unclaimed first, paged, filtered by payer; bad queries are 400.
    let (_, all) = rig.get("/channels").await;
    assert_eq!(all["total"], 2);
    assert_eq!(address(&all["channels"][0]["payer"]), rig.address(3));
    assert_eq!(all["channels"][0]["charged"], "600");
    assert_eq!(all["channels"][0]["unclaimed"], "600");
    assert_eq!(all["channels"][0]["claimed"], "0");
    assert_eq!(all["channels"][0]["balance"], "20000");
    assert_eq!(all["channels"][0]["withdrawal"]["state"], "none");
    assert!(all["channels"][0]["last_voucher_at"].as_u64().unwrap() > 0);
    let (_, second) = rig.get("/channels?limit=1&offset=1").await;
    assert_eq!(
        (
            second["total"].as_u64(),
            second["channels"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    assert_eq!(address(&second["channels"][0]["payer"]), rig.address(4));
    let c4 = rig.channel_of(4).await;
    assert_eq!(c4["charged"], "120");
    for bad in [
        "/channels?limit=0",
        "/channels?limit=501",
        "/channels?payer=nope",
        "/channels?sort=size",
    ] {
        assert_eq!(rig.get(bad).await.0, 400, "{bad}");
    }
    let (_, totals) = rig.get("/totals").await;
    assert_eq!(
        (totals["charged"].as_str(), totals["unclaimed"].as_str()),
        (Some("720"), Some("720"))
    );
    assert_eq!(totals["largest_unclaimed"][0]["charged"], "600");
    assert_eq!(totals["settler"], true);

    // Block payer 4: its next voucher is refused and nothing about its channel changes.
    let (status, blocked) = rig.post(&format!("/payers/{}/block", rig.address(4))).await;
    assert_eq!((status, blocked["changed"].as_bool()), (200, Some(true)));
    let before = rig.channel_of(4).await;
    assert_eq!(before["blocked"], true);
    let refused = p4.get(&format!("{}/v1/work/30", rig.proxy)).await;
    assert_eq!(refused_reason(refused), BLOCKED);
    let after = rig.channel_of(4).await;
    for field in [
        "charged",
        "signed_max_claimable",
        "balance",
        "last_voucher_at",
    ] {
        assert_eq!(before[field], after[field], "{field}");
    }
    let (_, activity) = rig.get("/activity").await;
    let rejections = activity["rejections"].as_array().unwrap();
    assert!(
        rejections
            .iter()
            .any(|r| r["reason"] == BLOCKED && r["count"] == 1),
        "{activity}"
    );
    // Unblock: accepted again.
    let (status, _) = rig
        .post(&format!("/payers/{}/unblock", rig.address(4)))
        .await;
    assert_eq!(status, 200);
    pay(&p4, &rig.proxy, &[30]).await;
    assert_eq!(rig.channel_of(4).await["charged"], "150");

    // Claim now: one batch, both channels' charges on chain.
    let (status, claim) = rig.post("/claim").await;
    assert_eq!(status, 200, "{claim}");
    assert_eq!(
        (claim["batches"].as_u64(), claim["rows"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(claim["claimed"], "750");
    let (id3, id4) = (
        id_of(&rig.channel_of(3).await),
        id_of(&rig.channel_of(4).await),
    );
    assert_eq!(escrow.channel_state(id3).await.unwrap().total_claimed, 600);
    assert_eq!(escrow.channel_state(id4).await.unwrap().total_claimed, 150);
    assert_eq!(rig.channel_of(3).await["unclaimed"], "0");
    let (claimed, _) = escrow
        .receiver_totals(pay_to, rig.chain.token)
        .await
        .unwrap();
    let (_, totals) = rig.get("/totals").await;
    assert_eq!(totals["revenue"]["claimed"], claimed.to_string());
    assert_eq!(totals["revenue"]["claimed"], "750");
    // The journal's transactions: the claim with its gas and fee, set against the six paid
    // requests since the start.
    let (_, journal) = rig.get("/journal").await;
    let tx = &journal["transactions"][0];
    assert_eq!(
        (tx["kind"].as_str(), tx["rows"].as_u64()),
        (Some("claim"), Some(2))
    );
    let gas = tx["gas_used"].as_u64().unwrap();
    assert!(gas > 21_000, "{tx}");
    assert!(tx["fee_wei"].as_str().unwrap().parse::<u128>().unwrap() > 0);
    assert_eq!(tx["paid_requests"], 6);
    assert_eq!(tx["gas_per_paid_request"], gas / 6);
    assert_eq!(journal["open"].as_array().unwrap().len(), 0, "{journal}");

    // The chart's samples never count a claim twice (mined on chain, not yet applied to
    // the ledger): what was earned never exceeds what was charged, 750. (Only a sample
    // taken inside that window could break this; whether one is, is up to timing.)
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (_, activity) = rig.get("/activity").await;
    let samples = activity["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{activity}");
    for s in samples {
        let earned: u128 = s["earned"].as_str().unwrap().parse().unwrap();
        assert!(earned <= 750, "{s}");
    }
    assert_eq!(samples.last().unwrap()["claimed"], "750");

    // Sweep now: the claimed 750 reach payTo.
    let (status, sweep) = rig.post("/sweep").await;
    assert_eq!((status, sweep["swept"].as_str()), (200, Some("750")));
    assert_eq!(
        escrow
            .receiver_totals(pay_to, rig.chain.token)
            .await
            .unwrap(),
        (750, 750)
    );
    assert_eq!(rig.chain.net.balance_of(pay_to).await.unwrap(), 750);

    // Refund payer 3's channel: its remainder goes back on chain and the channel is gone.
    let payer_before = rig.chain.net.balance_of(rig.address(3)).await.unwrap();
    let (status, refund) = rig.post(&format!("/channels/{id3}/refund")).await;
    assert_eq!(status, 200, "{refund}");
    assert_eq!(refund["refunded"], "19400");
    let state = escrow.channel_state(id3).await.unwrap();
    assert_eq!((state.balance, state.total_claimed), (600, 600));
    assert_eq!(
        rig.chain.net.balance_of(rig.address(3)).await.unwrap(),
        payer_before + 19_400
    );
    let (_, page) = rig
        .get(&format!("/channels?payer={}", rig.address(3)))
        .await;
    assert_eq!(page["total"], 0);
    assert_eq!(rig.post(&format!("/channels/{id3}/refund")).await.0, 404);
    assert_eq!(rig.post("/channels/0x12/refund").await.0, 400);
    let (_, journal) = rig.get("/journal").await;
    assert_eq!(journal["transactions"][0]["kind"], "refund");

    // A block survives a restart: payer 3's deposit for a new channel is refused before
    // any transaction (the relayer's nonce does not move).
    let (status, _) = rig.post(&format!("/payers/{}/block", rig.address(3))).await;
    assert_eq!(status, 200);
    rig.restart().await;
    let (_, list) = rig.get("/payers/blocked").await;
    assert_eq!(list["blocked"], serde_json::json!([rig.address(3)]));
    let nonce = rig.chain.relayer_nonce().await;
    let fresh = PayingClient::new(
        ClientConfig::new(rig.chain.net.key(3).unwrap())
            .with_contracts(rig.chain.escrow, rig.chain.collector)
            .with_state_dir(rig.dir.path().join("payer-3-again")),
    );
    let refused = fresh.get(&format!("{}/v1/work/10", rig.proxy)).await;
    assert_eq!(refused_reason(refused), BLOCKED);
    assert_eq!(rig.chain.relayer_nonce().await, nonce);
    // Payer 4 is not blocked and its channel came back from the store.
    pay(&p4, &rig.proxy, &[10]).await;
    assert_eq!(rig.channel_of(4).await["charged"], "160");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_admin_table_without_its_token() {
    let chain = Chain::plain(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let admin_port = serve_process::free_port();
    let (config, port) = serve_process::write_config(
        &chain,
        dir.path(),
        "http://127.0.0.1:9",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
    );
    for token in [None, Some(""), Some("too-short")] {
        let mut cmd = serve_process::command(&chain, &config);
        cmd.env_remove("X402_ADMIN_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(t) = token {
            cmd.env("X402_ADMIN_TOKEN", t);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .expect("serve exits")
            .unwrap();
        assert!(!out.status.success(), "{token:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("X402_ADMIN_TOKEN"), "{token:?}: {err}");
        // It exited before serving: nothing listens on either port.
        for p in [port, admin_port] {
            assert!(std::net::TcpStream::connect(("127.0.0.1", p)).is_err());
        }
    }
}
