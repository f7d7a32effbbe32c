//! Core benchmarks: recovery, digest, ledger in memory, ledger + sled in each durability mode.
//!
//! `cargo bench --bench core -- --noplot`, then `python3 benches/report.py` for the table and
//! the ratios (docs/benchmarks.md). Every paid request here charges 0 out of a price of 100,
//! so one pre-signed voucher per channel stays valid forever; the code path (digest, one
//! recovery, rules, stage, compare-and-set, durability wait, apply) is the same as for any
//! other charge.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, Signature, U256};
use alloy_sol_types::SolStruct;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use x402_upto::ledger::OnchainState;
use x402_upto::store::persist;
use x402_upto::typed_data::{ChannelConfig, EscrowDomain, Voucher, sign_voucher};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};

const PRICE: u128 = 100;
const MANY: usize = 10_000;
/// Concurrent committers for group commit (one per disjoint channel subset).
const COMMITTERS: usize = 64;

fn domain() -> EscrowDomain {
    EscrowDomain::new(8453, Address::repeat_byte(0xee))
}

fn key() -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&B256::with_last_byte(7)).expect("valid scalar")
}

/// A ledger with `n` funded channels and one valid voucher for each.
fn fixture(n: usize) -> (Ledger, Arc<Vec<SignedVoucher>>) {
    let ledger = Ledger::new(domain());
    let key = key();
    let onchain = OnchainState {
        balance: 1_000_000_000,
        ..Default::default()
    };
    let vouchers = (0..n)
        .map(|i| {
            let config = ChannelConfig {
                payer: key.address(),
                payerAuthorizer: key.address(),
                receiver: Address::repeat_byte(1),
                receiverAuthorizer: Address::repeat_byte(2),
                token: Address::repeat_byte(3),
                withdrawDelay: U40::from(900u64),
                salt: B256::from(U256::from(i)),
            };
            let (id, _) = ledger.upsert_from_chain(config, onchain, 0);
            let sig = sign_voucher(&key, &domain(), id, PRICE).expect("sign");
            SignedVoucher {
                channel_id: id,
                max_claimable: PRICE,
                signature: Bytes::from(sig.as_bytes()),
            }
        })
        .collect();
    (ledger, Arc::new(vouchers))
}

fn serve_in_memory(ledger: &Ledger, voucher: &SignedVoucher) {
    let reservation = ledger
        .verify_and_reserve(voucher.clone(), PRICE)
        .expect("valid voucher");
    let staged = reservation.commit(0, 0).expect("within price");
    black_box(staged.apply().expect("held"));
}

async fn serve_durably(ledger: &Ledger, store: &SledStore, voucher: &SignedVoucher) {
    let reservation = ledger
        .verify_and_reserve(voucher.clone(), PRICE)
        .expect("valid voucher");
    let staged = reservation.commit(0, 0).expect("within price");
    black_box(persist(store, staged).await.expect("persisted"));
}

/// Runs `op(thread, k)` `iters` times split over `threads` OS threads; returns wall time.
fn on_threads(iters: u64, threads: u64, op: impl Fn(u64, u64) + Sync) -> Duration {
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

fn recovery(c: &mut Criterion) {
    let digest = domain().voucher_digest(Default::default(), PRICE);
    let sig = key().sign_hash_sync_for_bench(&digest);
    let raw = sig.as_bytes();
    let k_sig = k256::ecdsa::Signature::from_slice(&raw[..64]).expect("valid");
    let k_id = k256::ecdsa::RecoveryId::from_byte(raw[64] - 27).expect("0 or 1");

    let mut g = c.benchmark_group("recover");
    g.throughput(Throughput::Elements(1));
    g.bench_function("alloy_libsecp256k1/1t", |b| {
        b.iter(|| {
            black_box(
                Signature::from_raw_array(black_box(&raw))
                    .and_then(|s| s.recover_address_from_prehash(&digest)),
            )
        })
    });
    g.bench_function("alloy_libsecp256k1/2t", |b| {
        b.iter_custom(|iters| {
            on_threads(iters, 2, |_, _| {
                black_box(
                    Signature::from_raw_array(black_box(&raw))
                        .and_then(|s| s.recover_address_from_prehash(&digest)),
                )
                .ok();
            })
        })
    });
    g.bench_function("k256_0.13/1t", |b| {
        b.iter(|| {
            let vk = k256::ecdsa::VerifyingKey::recover_from_prehash(
                digest.as_slice(),
                black_box(&k_sig),
                k_id,
            );
            black_box(vk.map(|vk| {
                Address::from_raw_public_key(&vk.to_encoded_point(false).as_bytes()[1..])
            }))
        })
    });
    g.finish();
}

fn digest(c: &mut Criterion) {
    let d = domain();
    let full = d.eip712_domain();
    let id = x402_upto::ChannelId(B256::repeat_byte(9));
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cached_separator", |b| {
        b.iter(|| black_box(d.voucher_digest(black_box(id), PRICE)))
    });
    g.bench_function("alloy_eip712_signing_hash", |b| {
        b.iter(|| {
            let v = Voucher {
                channelId: black_box(id.0),
                maxClaimableAmount: PRICE,
            };
            black_box(v.eip712_signing_hash(&full))
        })
    });
    g.finish();
}

fn ledger_in_memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger_mem");
    g.throughput(Throughput::Elements(1));
    let (one, one_v) = fixture(1);
    g.bench_function("1ch/1t", |b| b.iter(|| serve_in_memory(&one, &one_v[0])));
    let (two, two_v) = fixture(2);
    g.bench_function("2ch/2t", |b| {
        b.iter_custom(|iters| {
            on_threads(iters, 2, |t, _| serve_in_memory(&two, &two_v[t as usize]))
        })
    });
    let (many, many_v) = fixture(MANY);
    let mut next = 0usize;
    g.bench_function("10k/1t", |b| {
        b.iter(|| {
            next = (next + 1) % MANY;
            serve_in_memory(&many, &many_v[next])
        })
    });
    g.bench_function("10k/2t", |b| {
        // Thread t serves channels t, t+2, t+4, … so they never meet on one channel.
        b.iter_custom(|iters| {
            on_threads(iters, 2, |t, k| {
                serve_in_memory(&many, &many_v[((2 * k + t) as usize) % MANY])
            })
        })
    });
    g.finish();
}

fn open_store(mode: Durability, fdatasync: bool) -> (tempfile::TempDir, Arc<SledStore>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(
        dir.path(),
        SledOptions {
            durability: mode,
            fdatasync,
        },
    )
    .expect("open");
    (dir, Arc::new(store))
}

fn label(mode: Durability, fdatasync: bool) -> &'static str {
    match (mode, fdatasync) {
        (Durability::None, _) => "none",
        (Durability::Group, true) => "group+fdatasync",
        (Durability::Group, false) => "group",
        (Durability::Every, true) => "every+fdatasync",
        (Durability::Every, false) => "every",
    }
}

/// One committer, one request at a time: latency-bound in the durable modes.
fn store_sequential(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_seq");
    g.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (one, one_v) = fixture(1);
    let (many, many_v) = fixture(MANY);
    for (mode, sync) in [
        (Durability::None, false),
        (Durability::Group, false),
        (Durability::Group, true),
        (Durability::Every, false),
        (Durability::Every, true),
    ] {
        let (_dir, store) = open_store(mode, sync);
        g.bench_function(BenchmarkId::new(label(mode, sync), "1ch/1t"), |b| {
            b.iter(|| rt.block_on(serve_durably(&one, &store, &one_v[0])))
        });
        let mut next = 0usize;
        g.bench_function(BenchmarkId::new(label(mode, sync), "10k/1t"), |b| {
            b.iter(|| {
                next = (next + 1) % MANY;
                rt.block_on(serve_durably(&many, &store, &many_v[next]))
            })
        });
    }
    g.finish();
}

/// `COMMITTERS` concurrent requests on disjoint channels: what group commit is for.
fn store_concurrent(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_conc");
    g.throughput(Throughput::Elements(1));
    let (many, many_v) = fixture(MANY);
    for workers in [1usize, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        for (mode, sync) in [
            (Durability::None, false),
            (Durability::Group, false),
            (Durability::Group, true),
        ] {
            let (_dir, store) = open_store(mode, sync);
            let id = BenchmarkId::new(label(mode, sync), format!("10k/{COMMITTERS}c/{workers}t"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        let mut set = tokio::task::JoinSet::new();
                        for task in 0..COMMITTERS as u64 {
                            let share = iters / COMMITTERS as u64
                                + u64::from(task < iters % COMMITTERS as u64);
                            let (ledger, store, vouchers) =
                                (many.clone(), store.clone(), many_v.clone());
                            set.spawn(async move {
                                for k in 0..share {
                                    // Task t owns channels t, t+64, t+128, … (disjoint sets).
                                    let per_task = (MANY / COMMITTERS) as u64;
                                    let idx = (task + COMMITTERS as u64 * (k % per_task)) as usize;
                                    serve_durably(&ledger, &store, &vouchers[idx]).await;
                                }
                            });
                        }
                        while let Some(done) = set.join_next().await {
                            done.expect("committer");
                        }
                        start.elapsed()
                    })
                })
            });
        }
    }
    g.finish();
}

/// Signs a digest with the local key (bench setup only).
trait SignForBench {
    fn sign_hash_sync_for_bench(&self, digest: &B256) -> Signature;
}

impl SignForBench for PrivateKeySigner {
    fn sign_hash_sync_for_bench(&self, digest: &B256) -> Signature {
        x402_upto::typed_data::sign_digest(self, digest).expect("sign")
    }
}

criterion_group!(
    benches,
    recovery,
    digest,
    ledger_in_memory,
    store_sequential,
    store_concurrent
);
criterion_main!(benches);
