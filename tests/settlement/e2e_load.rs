//! 50 channels × 200 paid requests with random actual charges, through the ledger and a
//! durable store, while the claim scheduler runs; then a final claim round and a sweep. The
//! receiver's token balance and every channel's on-chain `totalClaimed` must equal the
//! ledger's charged sums exactly. Prints the gas per paid request next to what x402 `exact`
//! (one ERC-3009 `transferWithAuthorization` per request, measured here on MockUSDC) costs;
//! `docs/gas.md` quotes these lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{B256, U256};
use alloy_sol_types::SolEvent;
use rand::{Rng, SeedableRng};
use x402_upto::chain::bindings::UptoEscrow;
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig};
use x402_upto::typed_data::ChannelId;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_testkit::devnet::Devnet;
use x402_upto_testkit::offchain::signed_voucher;

const PRICE: u128 = 10_000;

/// Size of the run: 50 × 200 by default (the CI profile); the longer profile sets
/// `X402_E2E_CHANNELS` / `X402_E2E_REQUESTS` (see `docs/settlement.md`).
fn size() -> (usize, usize) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    (var("X402_E2E_CHANNELS", 50), var("X402_E2E_REQUESTS", 200))
}

/// Gas of `n` x402-`exact`-style payments (`transferWithAuthorization`, relayed by the
/// deployer) from `payer` to a receiver that starts with no tokens: the first pays for a
/// fresh balance slot, the rest are the steady state.
async fn exact_gas(net: &Devnet, payer: &PrivateKeySigner, n: u8) -> Vec<u64> {
    let to = PrivateKeySigner::random().address();
    let mut out = Vec::new();
    for i in 0..n {
        let receipt = net
            .exact_transfer(payer, to, 5_000, B256::repeat_byte(i))
            .await
            .expect("exact transfer");
        out.push(receipt.gas_used);
    }
    out
}

#[derive(Default, Debug)]
struct GasByKind {
    deposits: (u64, u64),
    claims: (u64, u64),
    settles: (u64, u64),
    claim_rows: usize,
}

/// Sums receipts' gas in blocks `from..=to` by what the transaction did (its escrow events).
async fn gas_by_kind(net: &Devnet, from: u64, to: u64) -> GasByKind {
    let mut g = GasByKind::default();
    for n in from..=to {
        let receipts = net
            .provider
            .get_block_receipts(n.into())
            .await
            .expect("receipts")
            .unwrap_or_default();
        for r in receipts {
            let topics: Vec<B256> = r
                .inner
                .logs()
                .iter()
                .filter(|l| l.address() == net.escrow)
                .filter_map(|l| l.topics().first().copied())
                .collect();
            let slot = if topics.contains(&UptoEscrow::Deposited::SIGNATURE_HASH) {
                &mut g.deposits
            } else if topics.contains(&UptoEscrow::Settled::SIGNATURE_HASH) {
                &mut g.settles
            } else if r.to == Some(net.escrow) {
                g.claim_rows += topics
                    .iter()
                    .filter(|t| **t == UptoEscrow::Claimed::SIGNATURE_HASH)
                    .count();
                &mut g.claims
            } else {
                continue;
            };
            slot.0 += 1;
            slot.1 += r.gas_used;
        }
    }
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_channels_times_two_hundred_requests_settle_to_the_exact_charged_sums() {
    let started = Instant::now();
    let net = Devnet::start().await.expect("devnet");
    let receiver = PrivateKeySigner::random().address();
    let authorizer = net.key(3).expect("key");
    let relayer = net.key(5).expect("key");
    let client = Arc::new(net.escrow_client(relayer, Some(authorizer.clone())));
    let (n_channels, n_requests) = size();
    let deposit = PRICE * n_requests as u128;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
            .expect("store"),
    );
    let ledger = Ledger::new(net.domain());

    let first_block = net.provider.get_block_number().await.expect("block") + 1;
    let mut channels: Vec<(PrivateKeySigner, ChannelId)> = Vec::new();
    for i in 0..n_channels {
        let payer = PrivateKeySigner::random();
        net.mint(payer.address(), deposit).await.expect("mint");
        let salt = B256::from(U256::from(i));
        let config = net.channel_config(
            payer.address(),
            payer.address(),
            receiver,
            authorizer.address(),
            salt,
        );
        let id = net
            .deposit(&payer, &config, deposit, salt)
            .await
            .expect("deposit");
        let state = client.channel_state(id).await.expect("read");
        ledger.upsert_from_chain(config, state, 0);
        channels.push((payer, id));
    }
    let opened = started.elapsed();

    // Claims run during the load: a channel is claimed once 250_000 is unclaimed (about
    // every 50 requests at an average charge of 5_000).
    let handle = Settlement::new(
        ledger.clone(),
        Arc::clone(&client),
        ClaimJournal::open(&store).expect("journal"),
        SettlementConfig {
            claim_threshold: 250_000,
            claim_interval: Duration::from_secs(3_600),
            settle_interval: Duration::from_secs(3_600),
            tick: Duration::from_millis(100),
            ..SettlementConfig::default()
        },
    )
    .spawn();

    let load_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, (payer, id)) in channels.iter().cloned().enumerate() {
        let ledger = ledger.clone();
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            let mut charged = 0u128;
            for _ in 0..n_requests {
                let actual = rng.random_range(0..=PRICE);
                let max = charged + PRICE;
                let voucher = signed_voucher(&payer, ledger.domain(), id, max);
                let reservation = ledger.verify_and_reserve(voucher, PRICE).expect("accepted");
                let staged = reservation.commit(actual, 1).expect("within price");
                let receipt = x402_upto::store::persist(store.as_ref(), staged)
                    .await
                    .expect("durable");
                charged += actual;
                assert_eq!(receipt.snapshot.charged, charged);
            }
            (id, charged)
        }));
    }
    let mut expected: Vec<(ChannelId, u128)> = Vec::new();
    for t in tasks {
        expected.push(t.await.expect("task"));
    }
    let load = load_started.elapsed();

    let s = Arc::clone(handle.settlement());
    let last = s.claim_round(true).await;
    assert_eq!(last.failed_rows, 0);
    let swept = s.settle_round().await.expect("settle");
    handle.shutdown().await;
    let last_block = net.provider.get_block_number().await.expect("block");

    let total: u128 = expected.iter().map(|(_, c)| c).sum();
    assert!(ledger.claimable().is_empty());
    for (id, charged) in &expected {
        let state = client.channel_state(*id).await.expect("read");
        assert_eq!(state.total_claimed, *charged, "channel {id}");
        assert_eq!(ledger.snapshot(id).expect("known").charged, *charged);
    }
    assert_eq!(net.balance_of(receiver).await.expect("bal"), total);
    assert_eq!(swept, total);
    assert_eq!(
        net.balance_of(net.escrow).await.expect("bal"),
        deposit * n_channels as u128 - total
    );

    let gas = gas_by_kind(&net, first_block, last_block).await;
    let exact_payer = PrivateKeySigner::random();
    net.mint(exact_payer.address(), 1_000_000)
        .await
        .expect("mint");
    let exact = exact_gas(&net, &exact_payer, 5).await;
    let requests = (n_channels * n_requests) as f64;
    let settlement_gas = (gas.claims.1 + gas.settles.1) as f64;
    eprintln!(
        "e2e: {n_channels} channels x {n_requests} requests, charged {total}; open {opened:.1?}, load {load:.1?} \
         ({:.0} req/s), total {:.1?}",
        requests / load.as_secs_f64(),
        started.elapsed()
    );
    eprintln!(
        "gas: claims {} txs with {} rows / {} gas, settles {} / {}, deposits {} / {}",
        gas.claims.0,
        gas.claim_rows,
        gas.claims.1,
        gas.settles.0,
        gas.settles.1,
        gas.deposits.0,
        gas.deposits.1
    );
    eprintln!(
        "gas per paid request: claims+settle {:.1}, incl. deposits {:.1}; x402 exact transferWithAuthorization {:?} (first to a fresh receiver, then steady)",
        settlement_gas / requests,
        (settlement_gas + gas.deposits.1 as f64) / requests,
        exact
    );
    assert!(gas.claims.0 >= 2, "claims ran during the load too");
}
