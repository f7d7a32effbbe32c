//! What `serve`'s rate limits add to a paid request, next to the one signature recovery
//! every paid request costs: a token taken from a bucket that exists, and the payer read
//! from a voucher header (base64 and the engine's one-pass JSON reader).
//!
//! `cargo bench -p x402-upto-app --bench limits`. The three run back to back in one group,
//! so compare them within one run (the machine is shared).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use serde_json::json;
use x402_upto::wire::{PAYMENT_SIGNATURE, encode_header};
use x402_upto_app::serve::limits::{BucketMap, Rate, named_payer};
use x402_upto_testkit::fixture::config_json;
use x402_upto_testkit::offchain;

fn bench(c: &mut Criterion) {
    let domain = offchain::domain();
    let key = offchain::payer(3);
    let config = offchain::channel_config(key.address(), 7);
    let id = domain.channel_id(&config);
    let voucher = offchain::signed_voucher(&key, &domain, id, 1_000_000);
    let payload = json!({
        "x402Version": 2,
        "accepted": {
            "scheme": "batch-settlement", "network": "eip155:31337", "amount": "1000",
            "asset": format!("{:?}", config.token), "payTo": format!("{:?}", config.receiver),
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2", "withdrawDelay": 900,
                      "receiverAuthorizer": format!("{:?}", config.receiverAuthorizer)}
        },
        "payload": {
            "type": "voucher",
            "channelConfig": config_json(&config),
            "voucher": {"channelId": id.0, "maxClaimableAmount": "1000000",
                        "signature": voucher.signature}
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        PAYMENT_SIGNATURE,
        HeaderValue::from_str(&encode_header(&payload)).expect("base64"),
    );
    assert_eq!(named_payer(&headers), Some((key.address(), id)));

    let map = BucketMap::new(65_536);
    let rate = Rate {
        per_second: 1e12,
        burst: 1e12,
    };
    let keys: Vec<(u32, IpAddr)> = (0..4096u32)
        .map(|i| (0, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    for k in &keys {
        map.take(k, rate, Duration::ZERO).expect("full");
    }

    let mut g = c.benchmark_group("limits");
    let mut i = 0usize;
    g.bench_function("bucket_take", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(map.take(&keys[i], rate, map.now()))
        })
    });
    g.bench_function("named_payer", |b| {
        b.iter(|| black_box(named_payer(black_box(&headers))))
    });
    g.bench_function("recovery", |b| {
        b.iter(|| black_box(voucher.clone().verify_ecdsa(&domain, key.address())))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
