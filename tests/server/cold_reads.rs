//! Chain reads for channels the server does not know are bounded: ids found empty are
//! answered from a negative cache, a spray of new ids is rate-limited (402 `rpc_read_failed`,
//! no read, no gas, known channels unaffected), and concurrent first requests on one channel
//! share a single read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use support::{Fixture, MockChain};
use x402_upto::engine::{BoxFuture, ChainAccess, ChainFailure, ColdReadLimits};
use x402_upto::ledger::OnchainState;
use x402_upto::typed_data::ChannelId;

const NOT_FOUND: &str = "invalid_batch_settlement_evm_channel_not_found";
const LIMITED: &str = "invalid_batch_settlement_evm_rpc_read_failed";

fn limits(burst: u32, per_second: u32, ttl: Duration) -> ColdReadLimits {
    ColdReadLimits {
        per_second,
        burst,
        negative_ttl: ttl,
        negative_capacity: 1_000,
        ..ColdReadLimits::default()
    }
}

#[tokio::test]
async fn an_empty_channel_is_read_once_then_answered_from_the_negative_cache() {
    let f = Fixture::new().await;
    let ttl = Duration::from_millis(300);
    f.engine.set_cold_read_limits(limits(100, 100, ttl));
    let config = f.config(1);
    for _ in 0..5 {
        let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
        assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(a.reason(), NOT_FOUND);
    }
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 1);

    // A deposit made elsewhere is seen once the negative entry expires.
    f.fund(&config, 10_000);
    let a = f.send("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(a.reason(), NOT_FOUND);
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 1);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    f.send_ok("/paid", &f.voucher_payload(&config, 1000)).await;
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_spray_of_unknown_channels_is_rate_limited_and_known_channels_still_served() {
    let f = Fixture::new().await;
    // Four reads, no refill: deterministic.
    f.engine
        .set_cold_read_limits(limits(4, 0, Duration::from_secs(600)));
    let known = f.config(1);
    f.fund(&known, 10_000);
    f.send_ok("/paid", &f.voucher_payload(&known, 1000)).await;
    let before = f.state().await;

    let mut reasons = Vec::new();
    for salt in 10..16u8 {
        let a = f
            .send("/paid", &f.voucher_payload(&f.config(salt), 1000))
            .await;
        assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
        reasons.push(a.reason());
    }
    assert_eq!(reasons[..3], [NOT_FOUND; 3]);
    assert_eq!(reasons[3..], [LIMITED; 3]);
    // 1 for the known channel + 3 for the first unknown ones; the limited ones read nothing.
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 4);
    // Ids already found empty are still answered (from the cache, no token needed).
    let a = f
        .send("/paid", &f.voucher_payload(&f.config(10), 1000))
        .await;
    assert_eq!(a.reason(), NOT_FOUND);
    // A deposit on an unknown channel while limited: refused before any gas.
    let a = f
        .send("/paid", &f.deposit_payload(&f.config(20), 1000, 5000))
        .await;
    assert_eq!(a.reason(), LIMITED);
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 0);
    assert_eq!(f.state().await, before);
    // The known channel needs no read and is served as usual.
    f.send_ok("/paid", &f.voucher_payload(&known, 2000)).await;
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_bucket_refills_over_time() {
    let f = Fixture::new().await;
    f.engine
        .set_cold_read_limits(limits(1, 20, Duration::from_secs(600)));
    let a = f
        .send("/paid", &f.voucher_payload(&f.config(1), 1000))
        .await;
    assert_eq!(a.reason(), NOT_FOUND);
    let a = f
        .send("/paid", &f.voucher_payload(&f.config(2), 1000))
        .await;
    assert_eq!(a.reason(), LIMITED);
    // 20 per second: one token after 50 ms.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let a = f
        .send("/paid", &f.voucher_payload(&f.config(2), 1000))
        .await;
    assert_eq!(a.reason(), NOT_FOUND);
    assert_eq!(f.chain.reads.load(Ordering::SeqCst), 2);
}

/// The mock chain with reads that wait for permits, counting them.
#[derive(Debug)]
struct SlowChain {
    inner: Arc<MockChain>,
    gate: tokio::sync::Semaphore,
    reads: AtomicUsize,
}

impl ChainAccess for SlowChain {
    fn channel_state(&self, id: ChannelId) -> BoxFuture<'_, Result<OnchainState, ChainFailure>> {
        Box::pin(async move {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let permit = self.gate.acquire().await.unwrap();
            permit.forget();
            self.inner.channel_state(id).await
        })
    }

    x402_upto_testkit::chain_writes_to_inner!();
}

#[tokio::test]
async fn concurrent_first_requests_on_one_channel_share_one_read() {
    let mock = MockChain::shared();
    let slow = Arc::new(SlowChain {
        inner: mock.clone(),
        gate: tokio::sync::Semaphore::new(0),
        reads: AtomicUsize::new(0),
    });
    let f = Fixture::over(slow.clone(), mock);
    let config = f.config(1);
    f.fund(&config, 10_000);
    let payload = f.voucher_payload(&config, 1000);
    let requests = futures_util::future::join_all((0..8).map(|_| f.send("/paid", &payload)));
    let release = async {
        // Let every request reach the read, then open the gate wide enough for eight reads
        // (so that a missing coalescing shows up as reads > 1, not as a hang).
        while slow.reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        slow.gate.add_permits(8);
    };
    let (answers, ()) = tokio::join!(requests, release);
    assert_eq!(slow.reads.load(Ordering::SeqCst), 1);
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != StatusCode::OK) {
        assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
        // The loser sees the winner holding the channel, or (once it committed) a stale
        // voucher: never a second read, never a 500.
        assert!(
            [
                "invalid_batch_settlement_evm_channel_busy",
                "invalid_batch_settlement_evm_cumulative_amount_mismatch"
            ]
            .contains(&a.reason().as_str()),
            "{}",
            a.reason()
        );
    }
}
