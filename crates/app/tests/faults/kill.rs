//! SIGKILL fault tests on a real anvil. The binary's hidden `internal settle-load` runs
//! ledger + store + claim scheduler against the devnet's escrow and prints `ack <channel>
//! <charged>` only after a voucher is durable. We kill it (SIGKILL) during the load, and
//! while a claim batch is in flight; the restart (`--finish`) must reconcile, lose no
//! acknowledged voucher, and claim nothing twice: every channel's on-chain `totalClaimed`
//! ends equal to the charged amount in the store, which is at least the last ack.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, U256};
use x402_upto::chain::bindings::UptoEscrow;
use x402_upto::typed_data::ChannelId;
use x402_upto::{SledOptions, SledStore, Store};
use x402_upto_app::harness::settle_load::{settle_load_config, settle_load_payer};
use x402_upto_testkit::devnet::Devnet;

const CHANNELS: u32 = 4;
const DEPOSIT: u128 = 100_000_000;

struct Setup {
    net: Devnet,
    receiver: Address,
    authorizer: PrivateKeySigner,
    relayer: PrivateKeySigner,
    ids: Vec<ChannelId>,
}

async fn setup() -> Setup {
    let net = Devnet::start().await.expect("devnet");
    let receiver = PrivateKeySigner::random().address();
    let authorizer = net.key(3).expect("key");
    let relayer = net.key(5).expect("key");
    let mut ids = Vec::new();
    for i in 0..CHANNELS {
        let payer = settle_load_payer(i);
        net.mint(payer.address(), DEPOSIT).await.expect("mint");
        let config = settle_load_config(i, net.token, receiver, authorizer.address());
        let id = net
            .deposit(&payer, &config, DEPOSIT, B256::from(U256::from(i)))
            .await
            .expect("deposit");
        ids.push(id);
    }
    Setup {
        net,
        receiver,
        authorizer,
        relayer,
        ids,
    }
}

enum Line {
    Out(String),
    Err(String),
}

fn spawn(s: &Setup, dir: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<Line>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_x402-upto"))
        .args(["internal", "settle-load"])
        .arg("--dir")
        .arg(dir)
        .args(["--rpc", s.net.endpoint_url().as_str()])
        .args(["--escrow", &s.net.escrow.to_string()])
        .args(["--collector", &s.net.collector.to_string()])
        .args(["--token", &s.net.token.to_string()])
        .args(["--receiver", &s.receiver.to_string()])
        .args([
            "--authorizer-key",
            &B256::from(s.authorizer.to_bytes()).to_string(),
        ])
        .args([
            "--relayer-key",
            &B256::from(s.relayer.to_bytes()).to_string(),
        ])
        .args(["--channels", &CHANNELS.to_string()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the x402-upto binary");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(Line::Out(line)).is_err() {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx2.send(Line::Err(line)).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Highest acknowledged charge per channel.
type Acks = BTreeMap<u32, u128>;

fn record_ack(acks: &mut Acks, line: &str) {
    let mut it = line.split(' ');
    if it.next() == Some("ack")
        && let (Some(Ok(ch)), Some(Ok(charged))) = (
            it.next().map(str::parse::<u32>),
            it.next().map(str::parse::<u128>),
        )
    {
        let e = acks.entry(ch).or_default();
        *e = (*e).max(charged);
    }
}

/// Reads lines until `stop` says so (or the deadline passes: panics with the stderr tail).
fn read_until(
    rx: &mpsc::Receiver<Line>,
    acks: &mut Acks,
    mut stop: impl FnMut(&Acks, &Line) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tail = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                match &line {
                    Line::Out(l) => record_ack(acks, l),
                    Line::Err(l) => {
                        tail.push(l.clone());
                        if tail.len() > 20 {
                            tail.remove(0);
                        }
                    }
                }
                if stop(acks, &line) {
                    return;
                }
            }
            Err(_) => panic!(
                "settle-load stalled or exited; stderr tail:\n{}",
                tail.join("\n")
            ),
        }
    }
}

/// Restarts with `--finish`, waits for `done`, returns the `reconciled` count.
fn finish(s: &Setup, dir: &Path) -> usize {
    let (mut child, rx) = spawn(s, dir, &["--finish"]);
    let mut reconciled = None;
    read_until(&rx, &mut Acks::new(), |_, line| {
        if let Line::Out(l) = line {
            if let Some(n) = l.strip_prefix("reconciled ") {
                reconciled = n.parse().ok();
            }
            return l.starts_with("done");
        }
        false
    });
    let status = child.wait().expect("reap");
    assert!(status.success(), "finish exited with {status}");
    reconciled.expect("reconciled line")
}

/// Every channel: last ack ≤ stored charged == on-chain totalClaimed; the receiver got it all.
async fn check(s: &Setup, dir: &Path, acks: &Acks) {
    let store = SledStore::open(dir, SledOptions::default()).expect("store");
    let records = store.load_all().await.expect("load");
    let escrow = UptoEscrow::new(s.net.escrow, s.net.provider.clone());
    let mut total = 0u128;
    for (i, id) in s.ids.iter().enumerate() {
        let record = records
            .iter()
            .find(|r| r.channel_id == *id)
            .expect("channel in the store");
        let onchain = escrow.channels(id.0).call().await.expect("read");
        let acked = acks.get(&(i as u32)).copied().unwrap_or(0);
        assert!(
            record.charged >= acked,
            "channel {i}: acknowledged {acked} but stored {}",
            record.charged
        );
        assert_eq!(
            onchain.totalClaimed, record.charged,
            "channel {i}: claimed on chain != charged"
        );
        total += record.charged;
    }
    assert!(total > 0);
    let receiver = escrow
        .receivers(s.receiver, s.net.token)
        .call()
        .await
        .expect("receivers");
    assert_eq!(receiver.totalClaimed, total);
    assert_eq!(s.net.balance_of(s.receiver).await.expect("bal"), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_load_no_acknowledged_voucher_is_lost_and_nothing_is_claimed_twice() {
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, rx) = spawn(&s, dir.path(), &["--claim-threshold", "50000"]);
    let mut acks = Acks::new();
    let mut mined = 0;
    read_until(&rx, &mut acks, |acks, line| {
        if let Line::Err(l) = line
            && l.contains("claim batch mined")
        {
            mined += 1;
        }
        mined >= 2 && acks.len() == CHANNELS as usize
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Acks already in the pipe were printed before the kill.
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        if let Line::Out(l) = line {
            record_ack(&mut acks, &l);
        }
    }
    finish(&s, dir.path());
    check(&s, dir.path(), &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_a_claim_batch_is_in_flight_the_restart_reconciles_it_from_the_journal() {
    let s = setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Blocks every 2 s from now on, so the final claim waits in the mempool.
    let p = &s.net.provider;
    p.raw_request::<_, serde_json::Value>("evm_setAutomine".into(), (false,))
        .await
        .expect("automine off");
    p.raw_request::<_, serde_json::Value>("evm_setIntervalMining".into(), (2u64,))
        .await
        .expect("interval mining");
    let never = u128::MAX.to_string();
    let (mut child, rx) = spawn(
        &s,
        dir.path(),
        &["--requests", "25", "--claim-threshold", &never],
    );
    let mut acks = Acks::new();
    read_until(
        &rx,
        &mut acks,
        |_, line| matches!(line, Line::Err(l) if l.contains("claim batch journalled; sending")),
    );
    // Give the broadcast a moment to reach the node, then kill before it is mined.
    std::thread::sleep(Duration::from_millis(300));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        if let Line::Out(l) = line {
            record_ack(&mut acks, &l);
        }
    }
    assert_eq!(acks.len(), CHANNELS as usize);
    assert!(acks.values().all(|&c| c > 0));
    let reconciled = finish(&s, dir.path());
    assert_eq!(reconciled, 1, "the in-flight batch was in the journal");
    check(&s, dir.path(), &acks).await;
}
