//! The admin API of two `serve` instances on one PostgreSQL store, on anvil: the actions
//! that send transactions (claim, sweep, refund) are refused with 409 `not_settler` by the
//! instance without the settler lease and done by the one with it; the block list is the
//! store's table, so a block made through one instance refuses the payer at the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use serde_json::Value;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};
use x402_upto_testkit::interop::{self as support, Chain};
use x402_upto_testkit::postgres::PgServer;

use crate::admin_api::{TOKEN, id_of, pay};
use crate::serve_process::{self, hex_key};

/// One instance: its proxy and admin origins, and the process.
struct Instance {
    proxy: String,
    admin: String,
    _child: tokio::process::Child,
}

impl Instance {
    async fn start(
        chain: &Chain,
        pg: &PgServer,
        upstream: &str,
        dir: &std::path::Path,
        n: usize,
        relayer: usize,
    ) -> Self {
        let (port, admin_port) = (serve_process::free_port(), serve_process::free_port());
        let head = chain
            .serve_toml(&format!("127.0.0.1:{port}"), upstream, "UNUSED")
            .replace("store = \"UNUSED\"\n", "");
        let config = dir.join(format!("serve-{n}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"{head}
[[route]]
prefix = "/v1/"
price = 1000
[deposits]
confirmations = 0
[settlement]
claim_threshold = "1000000000000"
claim_interval_secs = 86400
settle_interval_secs = 86400
confirmations = 0
[postgres]
url = "{url}"
lease_secs = 3
refresh_ms = 200
instance = "admin-{n}"
[admin]
listen = "127.0.0.1:{admin_port}"
"#,
                url = pg.url()
            ),
        )
        .unwrap();
        let child = serve_process::command(chain, &config)
            .env(
                "X402_RELAYER_KEY",
                hex_key(&chain.net.key(relayer).unwrap()),
            )
            .env("X402_ADMIN_TOKEN", TOKEN)
            .spawn()
            .unwrap();
        let admin = format!("http://127.0.0.1:{admin_port}");
        assert!(
            serve_process::answers(&format!("{admin}/"), 600).await,
            "instance {n} did not come up"
        );
        Self {
            proxy: format!("http://127.0.0.1:{port}"),
            admin,
            _child: child,
        }
    }

    async fn call(&self, post: bool, path: &str) -> (u16, Value) {
        let http = reqwest::Client::new();
        let url = format!("{}/api{path}", self.admin);
        let req = if post { http.post(url) } else { http.get(url) };
        let r = req.bearer_auth(TOKEN).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn settler(&self) -> bool {
        self.call(false, "/totals").await.1["settler"] == true
    }

    /// Waits until this instance's block list says `blocked` for `payer`.
    async fn sees_blocked(&self, payer: alloy_primitives::Address, blocked: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, list) = self.call(false, "/payers/blocked").await;
            let listed = list["blocked"].as_array().unwrap().iter().any(|p| {
                p.as_str()
                    .unwrap()
                    .parse::<alloy_primitives::Address>()
                    .unwrap()
                    == payer
            });
            if listed == blocked {
                assert_eq!(list["kept_in"], "postgres: x402_blocked_payers");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the block list did not reach {}",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_settler_acts_and_a_block_reaches_every_instance() {
    let chain = Chain::plain(&[3]).await;
    let pg = PgServer::start();
    let app = Router::new().route(
        "/v1/work/{n}",
        get(|Path(n): Path<u64>| async move { ([("x-upto-charge", n.to_string())], "ok") }),
    );
    let (upstream, _) = support::serve_local(app).await;
    let dir = tempfile::tempdir().unwrap();
    let a = Instance::start(&chain, &pg, &upstream, dir.path(), 0, 1).await;
    let b = Instance::start(&chain, &pg, &upstream, dir.path(), 1, 8).await;
    // One of the two takes the settler lease.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (settler, other) = loop {
        match (a.settler().await, b.settler().await) {
            (true, false) => break (&a, &b),
            (false, true) => break (&b, &a),
            _ => {}
        }
        assert!(Instant::now() < deadline, "no single settler");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let payer = chain.net.key(3).unwrap().address();
    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(dir.path().join("payer")),
    );
    pay(&client, &other.proxy, &[100, 200]).await;

    // Actions at the instance without the lease: 409, saying where to go; nothing sent.
    let (_, page) = other.call(false, &format!("/channels?payer={payer}")).await;
    let id = id_of(&page["channels"][0]);
    for path in [
        "/claim".to_owned(),
        "/sweep".to_owned(),
        format!("/channels/{id}/refund"),
    ] {
        let (status, body) = other.call(true, &path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("not_settler")),
            "{path}"
        );
        assert!(body["message"].as_str().unwrap().contains("settler lease"));
    }
    let escrow = chain.escrow_client();
    assert_eq!(escrow.channel_state(id).await.unwrap().total_claimed, 0);

    // A block through the other instance refuses the payer at the settler too.
    let (status, _) = other.call(true, &format!("/payers/{payer}/block")).await;
    assert_eq!(status, 200);
    settler.sees_blocked(payer, true).await;
    match client.get(&format!("{}/v1/work/5", settler.proxy)).await {
        Err(ClientError::Refused { reason, .. }) => {
            assert_eq!(reason, "invalid_batch_settlement_evm_payer_blocked");
        }
        other => panic!("expected payer_blocked, got {other:?}"),
    }
    let (status, _) = settler
        .call(true, &format!("/payers/{payer}/unblock"))
        .await;
    assert_eq!(status, 200);
    other.sees_blocked(payer, false).await;
    pay(&client, &other.proxy, &[50]).await;

    // The settler claims what both instances charged.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Its cache may trail the other instance's last charge by a refresh.
        let (status, claim) = settler.call(true, "/claim").await;
        assert_eq!(status, 200, "{claim}");
        if escrow.channel_state(id).await.unwrap().total_claimed == 350 {
            break;
        }
        assert!(Instant::now() < deadline, "not claimed: {claim}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
