//! Fixtures shared by the bench targets. Every paid request charges 0 out of a price of 100,
//! so one pre-signed voucher per channel stays valid forever; the code path (digest, one
//! recovery, rules, stage, compare-and-set, durability wait, apply) is the same as for any
//! other charge.

#![allow(dead_code)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, Signature};
use x402_upto::ledger::OnchainState;
use x402_upto::store::persist;
use x402_upto::typed_data::{ChannelConfig, EscrowDomain, sign_digest};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};

pub const PRICE: u128 = 100;
pub const MANY: usize = 10_000;
/// Concurrent committers for group commit (one per disjoint channel subset).
pub const COMMITTERS: usize = 64;

pub fn domain() -> EscrowDomain {
    EscrowDomain::new(8453, Address::repeat_byte(0xee))
}

pub fn key() -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&B256::with_last_byte(7)).expect("valid scalar")
}

/// A valid signature and its digest, for raw recovery.
pub fn raw_signature() -> (B256, [u8; 65]) {
    let digest = domain().voucher_digest(Default::default(), PRICE);
    (
        digest,
        sign_digest(&key(), &digest).expect("sign").as_bytes(),
    )
}

/// One raw recovery as the alloy call does it (libsecp256k1 here).
pub fn recover_raw(digest: &B256, raw: &[u8; 65]) {
    let recovered = Signature::from_raw_array(black_box(raw))
        .and_then(|s| s.recover_address_from_prehash(digest));
    black_box(recovered).ok();
}

/// Config of bench channel `i`.
pub fn config(i: usize, payer: Address) -> ChannelConfig {
    x402_upto_testkit::offchain::channel_config(payer, i as u64)
}

/// A fresh ledger with `n` funded channels (every store needs its own: versions must match).
pub fn ledger(n: usize) -> Ledger {
    let ledger = Ledger::new(domain());
    let onchain = OnchainState {
        balance: 1_000_000_000,
        ..Default::default()
    };
    let payer = key().address();
    for i in 0..n {
        ledger.upsert_from_chain(config(i, payer), onchain, 0);
    }
    ledger
}

/// One valid voucher per channel of [`ledger`]`(n)` (channel ids are deterministic); signed
/// once per `n` per process.
pub fn vouchers(n: usize) -> Arc<Vec<SignedVoucher>> {
    static CACHE: std::sync::Mutex<Vec<(usize, Arc<Vec<SignedVoucher>>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().expect("voucher cache");
    if let Some((_, v)) = cache.iter().find(|(m, _)| *m == n) {
        return v.clone();
    }
    let v = sign_vouchers(n);
    cache.push((n, v.clone()));
    v
}

fn sign_vouchers(n: usize) -> Arc<Vec<SignedVoucher>> {
    let key = key();
    let vouchers = (0..n)
        .map(|i| {
            let id = domain().channel_id(&config(i, key.address()));
            x402_upto_testkit::offchain::signed_voucher(&key, &domain(), id, PRICE)
        })
        .collect();
    Arc::new(vouchers)
}

pub fn serve_in_memory(ledger: &Ledger, voucher: &SignedVoucher) {
    let reservation = ledger
        .verify_and_reserve(voucher.clone(), PRICE)
        .expect("valid voucher");
    let staged = reservation.commit(0, 0).expect("within price");
    black_box(staged.apply().expect("held"));
}

pub async fn serve_durably(ledger: &Ledger, store: &SledStore, voucher: &SignedVoucher) {
    let reservation = ledger
        .verify_and_reserve(voucher.clone(), PRICE)
        .expect("valid voucher");
    let staged = reservation.commit(0, 0).expect("within price");
    black_box(persist(store, staged).await.expect("persisted"));
}

/// Index of the `k`-th channel of committer `task` out of `committers`: disjoint sets.
pub fn committer_channel(task: u64, k: u64, committers: usize) -> usize {
    let per_task = (MANY / committers) as u64;
    (task + committers as u64 * (k % per_task)) as usize
}

pub fn open_store(mode: Durability, fdatasync: bool) -> (tempfile::TempDir, Arc<SledStore>) {
    open_store_with(SledOptions {
        durability: mode,
        fdatasync,
        ..SledOptions::default()
    })
}

pub fn open_store_with(options: SledOptions) -> (tempfile::TempDir, Arc<SledStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(dir.path(), options).expect("open");
    (dir, Arc::new(store))
}

pub fn label(mode: Durability, fdatasync: bool) -> &'static str {
    match (mode, fdatasync) {
        (Durability::None, _) => "none",
        (Durability::Group, true) => "group+fdatasync",
        (Durability::Group, false) => "group",
        (Durability::Every, true) => "every+fdatasync",
        (Durability::Every, false) => "every",
    }
}

/// Runs `op(thread, k)` `iters` times split over `threads` OS threads; returns wall time.
pub fn on_threads(iters: u64, threads: u64, op: impl Fn(u64, u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let share = iters / threads + u64::from(t < iters % threads);
            let op = &op;
            s.spawn(move || (0..share).for_each(|k| op(t, k)));
        }
    });
    start.elapsed()
}

/// Runs `committers` tasks on `rt` serving durably until `deadline`; returns operations done.
pub fn committers_until(
    committers: usize,
    rt: &tokio::runtime::Runtime,
    ledger: &Ledger,
    store: &Arc<SledStore>,
    vouchers: &Arc<Vec<SignedVoucher>>,
    deadline: Instant,
) -> u64 {
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for task in 0..committers as u64 {
            let (ledger, store, vouchers) = (ledger.clone(), store.clone(), vouchers.clone());
            set.spawn(async move {
                let mut k = 0;
                while Instant::now() < deadline {
                    serve_durably(
                        &ledger,
                        &store,
                        &vouchers[committer_channel(task, k, committers)],
                    )
                    .await;
                    k += 1;
                }
                k
            });
        }
        let mut total = 0;
        while let Some(done) = set.join_next().await {
            total += done.expect("committer");
        }
        total
    })
}
