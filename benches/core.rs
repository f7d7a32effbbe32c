//! Core benchmarks: recovery, digest, ledger in memory, ledger + sled in each durability mode.
//!
//! `cargo bench --bench core -- --noplot`, then `python3 benches/report.py` for the table
//! (docs/benchmarks.md). The target ratios come from `benches/ratios.rs`, which interleaves
//! its measurements to cancel the shared machine's load swings. Fixtures: `common/mod.rs`.

mod common;

use std::hint::black_box;
use std::time::Instant;

use alloy_primitives::{Address, B256, Signature};
use alloy_sol_types::SolStruct;
use common::*;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use x402_upto::Durability;
use x402_upto::store::persist;
use x402_upto::typed_data::Voucher;
use x402_upto::verify::VerifiedVoucher;

fn recovery(c: &mut Criterion) {
    let (digest, raw) = raw_signature();
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
    let (one, one_v) = (ledger(1), vouchers(1));
    g.bench_function("1ch/1t", |b| b.iter(|| serve_in_memory(&one, &one_v[0])));
    let (two, two_v) = (ledger(2), vouchers(2));
    g.bench_function("2ch/2t", |b| {
        b.iter_custom(|iters| {
            on_threads(iters, 2, |t, _| serve_in_memory(&two, &two_v[t as usize]))
        })
    });
    let (many, many_v) = (ledger(MANY), vouchers(MANY));
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

/// Everything except the recovery, to put a noise-free number on the overhead: the voucher
/// is verified once up front and the pre-verified copy is reserved, committed and applied.
fn overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("overhead");
    g.throughput(Throughput::Elements(1));
    let verified = |n: usize| -> Vec<VerifiedVoucher> {
        vouchers(n)
            .iter()
            .map(|v| {
                v.clone()
                    .verify_ecdsa(&domain(), key().address())
                    .expect("valid")
            })
            .collect()
    };
    let (one, one_v) = (ledger(1), verified(1));
    g.bench_function("verify_ecdsa_incl_digest", verify_ecdsa_incl_digest);
    g.bench_function("ledger_no_recovery/1ch", |b| {
        b.iter(|| reserve_commit_apply(&one, &one_v[0]))
    });
    let (many, many_v) = (ledger(MANY), verified(MANY));
    let mut next = 0usize;
    g.bench_function("ledger_no_recovery/10k", |b| {
        b.iter(|| {
            next = (next + 1) % MANY;
            reserve_commit_apply(&many, &many_v[next])
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, store) = open_store(Durability::None, false);
    let many = ledger(MANY);
    g.bench_function("ledger_no_recovery+sled_write/10k", |b| {
        b.iter(|| {
            next = (next + 1) % MANY;
            let reservation = many.reserve(many_v[next].clone(), PRICE).expect("valid");
            let staged = reservation.commit(0, 0).expect("within price");
            black_box(
                rt.block_on(persist(store.as_ref(), staged))
                    .expect("persisted"),
            );
        })
    });
    g.finish();
}

/// One voucher verification: its EIP-712 digest and one recovery. The domain and the payer's
/// address are made outside the loop: deriving the address from the key is a scalar
/// multiplication, not part of a verification.
fn verify_ecdsa_incl_digest(b: &mut criterion::Bencher<'_>) {
    let (v, domain, payer) = (vouchers(1)[0].clone(), domain(), key().address());
    b.iter(|| black_box(v.clone().verify_ecdsa(&domain, payer)))
}

fn reserve_commit_apply(ledger: &x402_upto::Ledger, voucher: &VerifiedVoucher) {
    let reservation = ledger.reserve(voucher.clone(), PRICE).expect("valid");
    let staged = reservation.commit(0, 0).expect("within price");
    black_box(staged.apply().expect("held"));
}

/// The `PAYMENT-RESPONSE` of a paid voucher: through serde (and a fresh EIP-55 checksum of
/// the payer, as before the payer-name cache) against the fixed-shape writer the server uses.
fn response_header(c: &mut Criterion) {
    use x402_upto::wire::{
        ChannelStateWire, PaymentResponseExtra, SettleResponse, encode_header, settle_header,
    };
    let payer = key().address();
    let response = |payer: String| SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(payer),
        transaction: String::new(),
        network: "eip155:8453".into(),
        amount: Some(String::new()),
        extra: Some(PaymentResponseExtra {
            charged_amount: Some(500),
            channel_state: Some(ChannelStateWire {
                channel_id: B256::repeat_byte(0x3c),
                balance: 10_000_000,
                total_claimed: 1_234_000,
                withdraw_requested_at: 0,
                refund_nonce: alloy_primitives::U256::from(3),
                charged_cumulative_amount: Some(2_345_500),
            }),
            voucher_state: None,
            other: Default::default(),
        }),
        extensions: None,
    };
    let named = response(payer.to_checksum(None));
    let mut g = c.benchmark_group("response_header");
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde+checksum", |b| {
        b.iter(|| black_box(encode_header(&response(black_box(payer).to_checksum(None)))))
    });
    g.bench_function("settle_header", |b| {
        b.iter(|| black_box(settle_header(black_box(&named))))
    });
    g.finish();
}

/// One paid request through the payment layer on an axum router, in process (no socket, no
/// HTTP parsing): header decode, one recovery, ledger, store write (durability `none`, so
/// the disk stays out), the handler, `PAYMENT-RESPONSE`. Next to one recovery with its
/// digest, in the same run: the difference is the work per paid request that is not the
/// recovery (issue 13). Each request carries a fresh voucher, signed outside the timing.
fn paid_request(c: &mut Criterion) {
    use tower::ServiceExt;
    use x402_upto_testkit::fixture::{Fixture, PRICE as FIXTURE_PRICE};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = Fixture::with_durability(Durability::None);
    let config = f.config(1);
    f.fund(&config, u128::from(u64::MAX));
    // A voucher signs exactly what was charged so far plus the price; the handler charges
    // 500 of it.
    let mut charged = 0u128;
    let mut g = c.benchmark_group("paid_request");
    g.throughput(Throughput::Elements(1));
    g.bench_function("payment_layer", |b| {
        b.iter_batched(
            || {
                let max = charged + FIXTURE_PRICE;
                charged += 500;
                f.paid_request("/paid?charge=500", &f.voucher_payload(&config, max))
            },
            |req| {
                let res = rt.block_on(f.app.clone().oneshot(req)).expect("infallible");
                assert_eq!(
                    res.status(),
                    http::StatusCode::OK,
                    "{:?}",
                    res.headers().get("payment-required")
                );
                black_box(res)
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("recovery_incl_digest", verify_ecdsa_incl_digest);
    g.finish();
}

/// One committer, one request at a time: latency-bound in the durable modes.
fn store_sequential(c: &mut Criterion) {
    let mut g = c.benchmark_group("store_seq");
    g.throughput(Throughput::Elements(1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (one_v, many_v) = (vouchers(1), vouchers(MANY));
    for (mode, sync) in [
        (Durability::None, false),
        (Durability::Group, false),
        (Durability::Group, true),
        (Durability::Every, false),
        (Durability::Every, true),
    ] {
        // Separate stores: channel 0 exists in both ledgers, with different versions.
        let (_dir1, store1) = open_store(mode, sync);
        let (_dir, store) = open_store(mode, sync);
        let (one, many) = (ledger(1), ledger(MANY));
        g.bench_function(BenchmarkId::new(label(mode, sync), "1ch/1t"), |b| {
            b.iter(|| rt.block_on(serve_durably(&one, &store1, &one_v[0])))
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
    let many_v = vouchers(MANY);
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
            let many = ledger(MANY);
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
                                    let idx = committer_channel(task, k, COMMITTERS);
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

criterion_group!(
    benches,
    recovery,
    digest,
    ledger_in_memory,
    overhead,
    paid_request,
    response_header,
    store_sequential,
    store_concurrent
);
criterion_main!(benches);
