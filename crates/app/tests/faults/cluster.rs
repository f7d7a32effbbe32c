//! Three `x402-upto serve` processes on one PostgreSQL store, on anvil, behind a small
//! round-robin TCP proxy (a new connection per request, so consecutive requests of one
//! payer land on different instances). Exactly-once under load, kill -9 of instances
//! (the settler among them), the database stopped and restarted under load, and a
//! withdrawal seen by the settler refused by every instance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use axum::Router;
use axum::routing::get;
use x402_upto::chain::bindings::{IUptoEscrow, UptoEscrow};
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::store::{PgOptions, PostgresStore};
use x402_upto::typed_data::ChannelId;
use x402_upto::{ChannelRecord, Store};
use x402_upto_testkit::devnet::mined;
use x402_upto_testkit::free_port;
use x402_upto_testkit::interop::{Chain, serve_local};
use x402_upto_testkit::postgres::PgServer;

const BIN: &str = env!("CARGO_BIN_EXE_x402-upto");
/// Anvil keys: relayers of the three instances, the shared receiver authorizer, payers.
const RELAYERS: [usize; 3] = [1, 8, 9];
const AUTHORIZER: usize = 2;
const PAYERS: [usize; 4] = [3, 4, 5, 6];
const CHARGE: u128 = 420;

struct Cluster {
    chain: Chain,
    pg: PgServer,
    dir: tempfile::TempDir,
    upstream: String,
    ports: Vec<u16>,
    children: Vec<Option<tokio::process::Child>>,
    proxy: String,
}

impl Cluster {
    async fn start() -> Self {
        let chain = Chain::plain(&PAYERS).await;
        let pg = PgServer::start();
        let app = Router::new().route(
            "/v1/answer",
            get(|| async { ([("x-upto-charge", CHARGE.to_string())], "42") }),
        );
        let (upstream, _) = serve_local(app).await;
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let proxy = round_robin(ports.clone()).await;
        let mut c = Self {
            chain,
            pg,
            dir: tempfile::tempdir().expect("temp dir"),
            upstream,
            ports,
            children: vec![None, None, None],
            proxy,
        };
        for i in 0..3 {
            c.spawn(i);
        }
        for i in 0..3 {
            assert!(answers(c.port_url(i)).await, "instance {i} did not come up");
        }
        c
    }

    fn port_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/v1/answer", self.ports[i])
    }

    fn url(&self) -> String {
        format!("{}/v1/answer", self.proxy)
    }

    fn spawn(&mut self, i: usize) {
        let config = self.write_config(
            &format!("serve-{i}"),
            self.ports[i],
            &format!("instance-{i}"),
        );
        let log = std::fs::File::create(self.dir.path().join(format!("serve-{i}.log")))
            .expect("log file");
        let child = self
            .command(&config, RELAYERS[i])
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn serve");
        self.children[i] = Some(child);
    }

    fn command(&self, config: &std::path::Path, relayer: usize) -> tokio::process::Command {
        let key = |n: usize| {
            format!(
                "0x{}",
                hex::encode(self.chain.net.key(n).expect("key").to_bytes())
            )
        };
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("X402_RELAYER_KEY", key(relayer))
            .env("X402_RECEIVER_AUTHORIZER_KEY", key(AUTHORIZER))
            .env("RUST_LOG", "info");
        cmd
    }

    fn write_config(&self, file: &str, port: u16, instance: &str) -> std::path::PathBuf {
        let config = self.dir.path().join(format!("{file}.toml"));
        let head = self
            .chain
            .serve_toml(&format!("127.0.0.1:{port}"), &self.upstream, "UNUSED");
        let head = head.replace("store = \"UNUSED\"\n", "");
        let toml = format!(
            r#"{head}
[[route]]
prefix = "/v1/"
price = 1000
[deposits]
confirmations = 0
[settlement]
claim_interval_secs = 2
tick_ms = 200
confirmations = 0
[watcher]
poll_ms = 200
[postgres]
url = "{url}"
hold_secs = 3
lease_secs = 3
refresh_ms = 200
instance = "{instance}"
"#,
            url = self.pg.url()
        );
        std::fs::write(&config, toml).expect("config");
        config
    }

    /// SIGKILL, no goodbye.
    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.start_kill().expect("kill");
            let _ = child.wait().await;
        }
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("serve-{i}.log"))).unwrap_or_default()
    }

    async fn records(&self) -> Vec<ChannelRecord> {
        let store = PostgresStore::open(PgOptions::new(self.pg.url()))
            .await
            .expect("store");
        store.load_all().await.expect("records")
    }

    /// Waits until every stored channel is claimed on chain up to its charge; returns the
    /// records.
    async fn until_claimed(&self) -> Vec<ChannelRecord> {
        let escrow = UptoEscrow::new(self.chain.escrow, self.chain.net.provider.clone());
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let records = self.records().await;
            let mut all = true;
            for r in &records {
                let on = escrow.channels(r.channel_id.0).call().await.expect("read");
                if on.totalClaimed != r.charged {
                    all = false;
                }
            }
            if all && !records.is_empty() {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "claims did not catch up; logs:\n{}\n{}\n{}",
                tail(&self.log(0)),
                tail(&self.log(1)),
                tail(&self.log(2))
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every `Claimed` event raised its channel's total (no claim sent twice), and per
    /// channel they add up to the final total.
    async fn claims_were_each_needed(&self, records: &[ChannelRecord]) {
        let filter = Filter::new()
            .address(self.chain.escrow)
            .event_signature(UptoEscrow::Claimed::SIGNATURE_HASH)
            .from_block(0);
        let logs = self
            .chain
            .net
            .provider
            .get_logs(&filter)
            .await
            .expect("logs");
        let mut sums: BTreeMap<ChannelId, u128> = BTreeMap::new();
        for log in logs {
            let ev = UptoEscrow::Claimed::decode_log(&log.inner).expect("Claimed");
            assert!(ev.claimAmount > 0, "a claim that raised nothing was sent");
            *sums.entry(ChannelId(ev.channelId)).or_default() += ev.claimAmount;
        }
        for r in records {
            assert_eq!(sums.get(&r.channel_id).copied().unwrap_or(0), r.charged);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..3 {
                eprintln!("--- serve-{i}.log ---\n{}", tail(&self.log(i)));
            }
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

async fn answers(url: String) -> bool {
    for _ in 0..400 {
        if reqwest::get(&url).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A TCP proxy sending each new connection to the next backend that accepts it.
async fn round_robin(ports: Vec<u16>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let ports = ports.clone();
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                for _ in 0..ports.len() {
                    let port = ports[next.fetch_add(1, Ordering::Relaxed) % ports.len()];
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// A payer whose every request opens a new connection (so the proxy spreads them).
fn payer(c: &Cluster, n: usize) -> PayingClient {
    let key: PrivateKeySigner = c.chain.net.key(n).expect("key");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client");
    let state = c.dir.path().join(format!("payer-{n}"));
    PayingClient::with_http(
        http,
        ClientConfig::new(key)
            .with_rpc(c.chain.rpc.clone())
            .with_contracts(c.chain.escrow, c.chain.collector)
            .with_state_dir(state),
    )
}

/// Pays `n` requests, retrying refusals; returns the acknowledged charges.
async fn pay(client: &PayingClient, url: &str, n: usize) -> u128 {
    let mut acked = 0;
    let mut done = 0;
    let mut failures = 0;
    while done < n {
        match client.get(url).await {
            Ok(a) if a.status.is_success() => {
                acked += a.charged().expect("a paid answer carries its charge");
                done += 1;
            }
            Ok(_) | Err(_) => {
                // Busy, an instance down, the database down: retry; nothing was acknowledged.
                failures += 1;
                assert!(failures < 2_000, "too many failures");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_charge_exactly_once_and_survive_kills_and_a_database_restart() {
    let mut c = Cluster::start().await;
    let url = c.url();

    // Phase 1, exactly once: every payer's requests spread over the three instances.
    let mut acked: BTreeMap<usize, u128> = BTreeMap::new();
    let clients: Vec<(usize, Arc<PayingClient>)> = PAYERS
        .iter()
        .map(|n| (*n, Arc::new(payer(&c, *n))))
        .collect();
    let round = |count: usize| {
        let url = url.clone();
        let tasks: Vec<_> = clients
            .iter()
            .map(|(n, client)| {
                let (n, client, url) = (*n, Arc::clone(client), url.clone());
                tokio::spawn(async move { (n, pay(&client, &url, count).await) })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("payer task"));
            }
            out
        }
    };
    for (n, a) in round(12).await {
        *acked.entry(n).or_default() += a;
    }
    let records = c.until_claimed().await;
    assert_eq!(records.len(), PAYERS.len());
    let payers: BTreeMap<usize, alloy_primitives::Address> = PAYERS
        .iter()
        .map(|n| (*n, c.chain.net.key(*n).expect("key").address()))
        .collect();
    let by_payer = |records: &[ChannelRecord], n: usize| {
        let who = payers[&n];
        records
            .iter()
            .find(|r| r.config.payer == who)
            .map(|r| r.charged)
            .expect("the payer's channel")
    };
    for n in PAYERS {
        assert_eq!(by_payer(&records, n), acked[&n], "payer {n}: exactly once");
        assert_eq!(acked[&n], 12 * CHARGE);
    }
    // Every instance served some of them.
    for i in 0..3 {
        assert!(
            c.log(i).contains("serving"),
            "instance {i} did not start: {}",
            tail(&c.log(i))
        );
    }

    // A fourth instance with instance 0's relayer key is refused at start: two processes
    // sending from one key would race on its nonces.
    let config = c.write_config("intruder", free_port(), "intruder");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        c.command(&config, RELAYERS[0]).output(),
    )
    .await
    .expect("the intruder exits")
    .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by the live instance"), "{err}");

    // Phase 2, kill -9 under load, each instance in turn, the settler (instance 0 took the
    // lease first) first.
    for victim in [0usize, 1, 2] {
        let load = round(8);
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill(victim).await;
        for (n, a) in load.await {
            *acked.entry(n).or_default() += a;
        }
        c.spawn(victim);
        assert!(
            answers(c.port_url(victim)).await,
            "instance {victim} restarted"
        );
    }

    // Phase 3, the database stopped under load and started again.
    let load = round(8);
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.pg.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.pg.start_again();
    for (n, a) in load.await {
        *acked.entry(n).or_default() += a;
    }

    // Nothing acknowledged was lost, every charge is claimed, no claim was sent twice. A
    // request whose answer died with its instance may be charged without an ack: the
    // charge is durable and claimable, never more than acknowledged plus those.
    let records = c.until_claimed().await;
    for n in PAYERS {
        let charged = by_payer(&records, n);
        assert!(
            charged >= acked[&n],
            "payer {n}: acknowledged {} but charged {charged}",
            acked[&n]
        );
        assert!(
            charged <= acked[&n] + 3 * CHARGE,
            "payer {n}: charged {charged} vs acked {}",
            acked[&n]
        );
        assert_eq!(charged % CHARGE, 0);
    }
    c.claims_were_each_needed(&records).await;
    // The settler role moved when its holder was killed.
    let settlers = (0..3)
        .filter(|i| c.log(*i).contains("took the settler lease"))
        .count();
    assert!(settlers >= 2, "the settler lease never changed hands");

    // Phase 4, a withdrawal seen by the settler is refused by every instance.
    let n = PAYERS[0];
    let key = c.chain.net.key(n).expect("key");
    let record = records
        .iter()
        .find(|r| r.config.payer == key.address())
        .expect("channel");
    let as_payer = UptoEscrow::new(c.chain.escrow, c.chain.net.provider_for(&key));
    mined(as_payer.initiateWithdraw(IUptoEscrow::ChannelConfig::from(&record.config), 1_000)).await;
    let client = payer(&c, n);
    let deadline = Instant::now() + Duration::from_secs(30);
    'instances: for i in 0..3 {
        loop {
            let a = client.get(&c.port_url(i)).await;
            match a {
                Ok(a) if a.status.is_success() => {
                    // Served before the settler's watcher saw the withdrawal.
                    assert!(
                        Instant::now() < deadline,
                        "instance {i} still serves a withdrawing channel"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Refused (402, or the client gives up on a channel it cannot use).
                _ => continue 'instances,
            }
        }
    }
}
