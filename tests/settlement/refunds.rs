//! Cooperative refunds of idle channels on a real anvil: the unclaimed charge is claimed in
//! the same transaction and only the remainder goes back; busy, recent or (by policy)
//! unclaimed channels are left alone.

use std::sync::Arc;
use std::time::Duration;

use x402_upto::settlement::{RefundPolicy, refund_idle, unix_now};
use x402_upto::typed_data::ChannelId;
use x402_upto::{Reservation, Store};
use x402_upto_testkit::settlement_fixture::SettlementFixture as Fixture;

const DEPOSIT: u128 = 1_000_000;
const PRICE: u128 = 10_000;

async fn fixture() -> Fixture {
    Fixture::start(10 * DEPOSIT).await
}

async fn open(f: &Fixture, salt: u8) -> ChannelId {
    f.open(salt, DEPOSIT, unix_now()).await
}

fn reserve(f: &Fixture, id: ChannelId) -> Reservation {
    let max = f.ledger.snapshot(&id).expect("known").charged + PRICE;
    f.ledger
        .verify_and_reserve(f.voucher(id, max), PRICE)
        .expect("accepted")
}

async fn serve(f: &Fixture, id: ChannelId, actual: u128, at: u64) {
    let staged = reserve(f, id).commit(actual, at).expect("within price");
    x402_upto::store::persist(f.store.as_ref(), staged)
        .await
        .expect("durable");
}

#[tokio::test]
async fn an_idle_channel_is_claimed_and_refunded_in_one_transaction_and_forgotten() {
    let f = fixture().await;
    let id = open(&f, 1).await;
    serve(&f, id, 4_000, 1).await;
    serve(&f, id, 3_000, 1).await;
    let done = refund_idle(&f.ledger, &f.store, &f.client, &RefundPolicy::default()).await;
    assert_eq!(done.len(), 1);
    let done = done
        .into_iter()
        .next()
        .and_then(Result::ok)
        .expect("refunded");
    assert_eq!((done.amount, done.claimed), (DEPOSIT - 7_000, 7_000));
    let state = f.client.channel_state(id).await.expect("read");
    assert_eq!((state.balance, state.total_claimed), (7_000, 7_000));
    assert_eq!(f.payer_balance().await, 10 * DEPOSIT - 7_000);
    assert!(f.ledger.snapshot(&id).is_none());
    assert!(f.store.load(id).await.expect("load").is_none());
}

#[tokio::test]
async fn recent_unused_unclaimed_by_policy_and_busy_channels_are_left_alone() {
    let f = fixture().await;
    let recent = open(&f, 1).await;
    serve(&f, recent, 1_000, unix_now()).await;
    let unused = open(&f, 2).await;
    let unclaimed = open(&f, 3).await;
    serve(&f, unclaimed, 1_000, 1).await;
    let busy = open(&f, 4).await;
    serve(&f, busy, 1_000, 1).await;
    let held = reserve(&f, busy);

    let policy = RefundPolicy {
        idle_after: Duration::from_secs(3_600),
        only_when_claimed: true,
    };
    assert!(
        refund_idle(&f.ledger, &f.store, &f.client, &policy)
            .await
            .is_empty()
    );
    let policy = RefundPolicy {
        only_when_claimed: false,
        ..policy
    };
    let done = refund_idle(&f.ledger, &f.store, &f.client, &policy).await;
    let ids: Vec<ChannelId> = done
        .into_iter()
        .filter_map(Result::ok)
        .map(|r| r.channel_id)
        .collect();
    assert_eq!(ids, vec![unclaimed]);
    for id in [recent, unused, busy] {
        assert_eq!(
            f.client.channel_state(id).await.expect("read").balance,
            DEPOSIT
        );
        assert_eq!(f.ledger.snapshot(&id).expect("known").balance, DEPOSIT);
    }
    // The busy channel's request completes normally and the next one is still served.
    let staged = held.commit(2_000, 1).expect("within price");
    x402_upto::store::persist(f.store.as_ref(), staged)
        .await
        .expect("durable");
    serve(&f, busy, 1_000, 1).await;
    assert_eq!(f.ledger.snapshot(&busy).expect("known").charged, 4_000);
}

#[tokio::test]
async fn the_scheduler_task_refunds_idle_channels_on_its_own() {
    let f = fixture().await;
    let id = open(&f, 1).await;
    serve(&f, id, 2_500, 1).await;
    let client = Arc::clone(&f.client);
    let handle = x402_upto::settlement::Settlement::new(
        f.ledger.clone(),
        client,
        x402_upto::settlement::ClaimJournal::open(&f.store).expect("journal"),
        x402_upto::settlement::SettlementConfig {
            claim_threshold: u128::MAX,
            tick: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .with_refunds(
        Arc::clone(&f.store),
        RefundPolicy::default(),
        Duration::from_millis(100),
    )
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.ledger.snapshot(&id).is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle channel not refunded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state = f.client.channel_state(id).await.expect("read");
    assert_eq!((state.balance, state.total_claimed), (2_500, 2_500));
    handle.shutdown().await;
}
