//! The PostgreSQL store on a throwaway server: compare-and-set, holds across instances,
//! group commit, the journal, the settler lease; and two engines (two "instances") serving
//! one channel through it.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use x402_upto::engine::{Authorized, Engine};
use x402_upto::store::{
    BatchState, ClaimJournal, Hold, JournalEntry, JournalStore, PgOptions, PostgresStore,
    StoreError,
};
use x402_upto::wire::{ResourceInfo, encode_header};
use x402_upto::{ChannelRecord, Ledger, Reason, Store};
use x402_upto_testkit::fixture::{Fixture, PRICE, engine_config};
use x402_upto_testkit::offchain;
use x402_upto_testkit::postgres::PgServer;

use crate::helpers::{config, domain, onchain};

async fn open(pg: &PgServer, name: &str, hold: Duration) -> PostgresStore {
    let mut o = PgOptions::new(pg.url());
    o.instance = name.to_owned();
    o.hold = hold;
    PostgresStore::open(o)
        .await
        .expect("open the postgres store")
}

fn record(salt: u8, charged: u128, version: u64) -> ChannelRecord {
    let d = domain();
    let c = config(
        alloy_primitives::Address::repeat_byte(0x11),
        u64::from(salt),
    );
    let id = d.channel_id(&c);
    let mut r = ChannelRecord::from_chain(id, c, onchain(1_000_000), 5);
    r.charged = charged;
    r.signed_max_claimable = charged;
    r.version = version;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_keeps_one_history_per_channel() {
    let pg = PgServer::start();
    let store = open(&pg, "a", Duration::from_secs(30)).await;
    let r1 = record(1, 10, 1);
    store.compare_and_set(None, &r1).await.expect("first write");
    // A second "first write" of the same channel loses, as does a stale version.
    match store.compare_and_set(None, &record(1, 99, 1)).await {
        Err(StoreError::Conflict { found, .. }) => assert_eq!(found, Some(1)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let r2 = record(1, 20, 2);
    store
        .compare_and_set(Some(1), &r2)
        .await
        .expect("second write");
    match store.compare_and_set(Some(1), &record(1, 30, 2)).await {
        Err(StoreError::Conflict { found, .. }) => assert_eq!(found, Some(2)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        store.load(r2.channel_id).await.expect("load"),
        Some(r2.clone())
    );
    // Another process sees the same record.
    let other = open(&pg, "b", Duration::from_secs(30)).await;
    assert_eq!(other.load_all().await.expect("load all"), vec![r2.clone()]);
    store.remove(r2.channel_id, 2).await.expect("remove");
    assert_eq!(other.load(r2.channel_id).await.expect("load"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_in_batches_and_all_land() {
    let pg = PgServer::start();
    let store = Arc::new(open(&pg, "a", Duration::from_secs(30)).await);
    let mut tasks = Vec::new();
    for salt in 0..200u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store.compare_and_set(None, &record(salt, 7, 1)).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("write");
    }
    let all = store.load_all().await.expect("load all");
    assert_eq!(all.len(), 200);
    let changes = store.changes_since(0).await.expect("changes");
    assert_eq!(changes.records.len(), 200);
    assert!(changes.cursor >= 200);
    assert!(
        store
            .changes_since(changes.cursor)
            .await
            .expect("changes")
            .records
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_is_exclusive_across_instances_and_checks_the_version() {
    let pg = PgServer::start();
    let a = open(&pg, "a", Duration::from_millis(800)).await;
    let b = open(&pg, "b", Duration::from_millis(800)).await;
    let r = record(3, 10, 1);
    let id = r.channel_id;
    a.compare_and_set(None, &r).await.expect("write");

    assert_eq!(a.hold(id, Some(1)).await.expect("hold"), Hold::Held);
    // Re-taking one's own hold is fine; another instance is told busy.
    assert_eq!(a.hold(id, Some(1)).await.expect("hold"), Hold::Held);
    assert_eq!(b.hold(id, Some(1)).await.expect("hold"), Hold::Busy);
    // A stale cache is told what is stored, before any handler runs.
    match b.hold(id, None).await.expect("hold") {
        Hold::Conflict(Some(stored)) => assert_eq!(*stored, r),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The commit releases the hold; the other instance may take it at the new version.
    let r2 = record(3, 20, 2);
    a.compare_and_set(Some(1), &r2).await.expect("commit");
    assert_eq!(b.hold(id, Some(2)).await.expect("hold"), Hold::Held);
    // A dead holder's hold expires.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(a.hold(id, Some(2)).await.expect("hold"), Hold::Held);
    // A hold on a channel nobody wrote yet is exclusive too, and the first write takes it.
    let fresh = record(4, 0, 1);
    assert_eq!(
        a.hold(fresh.channel_id, None).await.expect("hold"),
        Hold::Held
    );
    assert_eq!(
        b.hold(fresh.channel_id, None).await.expect("hold"),
        Hold::Busy
    );
    assert_eq!(a.load(fresh.channel_id).await.expect("load"), None);
    a.compare_and_set(None, &fresh)
        .await
        .expect("first write over a placeholder");
    assert_eq!(
        b.hold(fresh.channel_id, Some(1)).await.expect("hold"),
        Hold::Held
    );
    // A removed channel is a conflict with nothing stored.
    b.remove(fresh.channel_id, 1).await.expect("remove");
    assert_eq!(
        a.hold(fresh.channel_id, Some(1)).await.expect("hold"),
        Hold::Conflict(None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_and_the_lease_live_in_the_database() {
    let pg = PgServer::start();
    let a = Arc::new(open(&pg, "a", Duration::from_secs(30)).await);
    let journal = ClaimJournal::open(&a).expect("journal");
    let id = journal.begin(&[], 9).expect("begin");
    journal
        .mark_sent(id, &[alloy_primitives::B256::repeat_byte(7)])
        .expect("sent");
    let b = Arc::new(open(&pg, "b", Duration::from_secs(30)).await);
    let open_b: Vec<JournalEntry> = b.entries().expect("entries");
    assert_eq!(open_b.len(), 1);
    assert_eq!(open_b[0].state, BatchState::Sent);
    assert_eq!(
        ClaimJournal::open(&b)
            .expect("journal")
            .begin(&[], 10)
            .expect("begin"),
        id + 1
    );

    let la = a.settler_lease("settler:test", Duration::from_secs(3));
    let lb = b.settler_lease("settler:test", Duration::from_secs(3));
    assert_eq!(la.acquire(100).await.expect("acquire"), Some(1));
    assert!(la.is_safe());
    assert_eq!(lb.acquire(0).await.expect("acquire"), None);
    assert!(!lb.is_safe());
    assert_eq!(lb.last_poll().await.expect("poll"), 100);
    la.release().await.expect("release");
    assert_eq!(lb.acquire(0).await.expect("acquire"), Some(2));
    // Not taken back before it expires...
    assert_eq!(la.acquire(0).await.expect("acquire"), None);
    // ...but after.
    tokio::time::sleep(Duration::from_millis(3_200)).await;
    assert_eq!(la.acquire(0).await.expect("acquire"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_refuses_with_503_and_nothing_changes() {
    let pg = PgServer::start();
    let f = Fixture::new().await;
    let c = f.config(1);
    f.fund(&c, 1_000_000);
    let a = engine(&pg, "a", &f).await;
    let paid = pay(&a, &f, &c, PRICE).await.expect("paid");
    a.settle(paid, 600).await.expect("settled");
    pg.stop();
    let refused = pay(&a, &f, &c, 600 + PRICE).await.expect_err("refused");
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.reason, Some(Reason::UnexpectedVerifyError));
    assert!(refused.required.is_none(), "no offer on a 503");
    pg.start_again();
    // Served again once the database is back; the state is the one before the outage.
    let mut served = None;
    for _ in 0..50 {
        match pay(&a, &f, &c, 600 + PRICE).await {
            Ok(paid) => {
                served = Some(paid);
                break;
            }
            Err(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(r) => panic!("unexpected refusal {r}"),
        }
    }
    let receipt = a
        .settle(served.expect("served after restart"), 1000)
        .await
        .expect("settle");
    assert_eq!(receipt.extra.and_then(|e| e.charged_amount), Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_serve_one_channel_without_double_charging() {
    let pg = PgServer::start();
    let f = Fixture::new().await;
    let c = f.config(2);
    let id = f.fund(&c, 1_000_000);
    let a = engine(&pg, "a", &f).await;
    let b = engine(&pg, "b", &f).await;

    // A serves, then B serves the next voucher: B's cache is behind, it reloads.
    let paid = pay(&a, &f, &c, PRICE).await.expect("a");
    a.settle(paid, PRICE).await.expect("a settles");
    let paid = pay(&b, &f, &c, 2 * PRICE).await.expect("b, after reload");
    b.settle(paid, 400).await.expect("b settles");
    // A replays the same cumulative B just accepted: its stale cache would take it; the hold
    // at the checked version refuses it before any handler, with the corrective state.
    let replay = pay(&a, &f, &c, 2 * PRICE)
        .await
        .expect_err("replay refused");
    assert_eq!(replay.reason, Some(Reason::CumulativeAmountMismatch));
    let state = &replay.required.expect("402").accepts[0].extra["channelState"];
    assert_eq!(state["chargedCumulativeAmount"], "1400");

    // Both hold at once: one gets channel_busy.
    let held = pay(&a, &f, &c, 1400 + PRICE).await.expect("a holds");
    let busy = pay(&b, &f, &c, 1400 + PRICE).await.expect_err("busy");
    assert_eq!(busy.reason, Some(Reason::ChannelBusy));
    drop(held);
    // Released: B may serve it now.
    let mut served = None;
    for _ in 0..50 {
        match pay(&b, &f, &c, 1400 + PRICE).await {
            Ok(p) => {
                served = Some(p);
                break;
            }
            Err(r) if r.reason == Some(Reason::ChannelBusy) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(r) => panic!("{r}"),
        }
    }
    b.settle(served.expect("served"), 1).await.expect("settle");
    let stored = a.store().load(id).await.expect("load").expect("stored");
    assert_eq!((stored.charged, stored.signed_max_claimable), (1401, 2400));
}

async fn engine(pg: &PgServer, name: &str, f: &Fixture) -> Engine<PostgresStore> {
    let store = Arc::new(open(pg, name, Duration::from_secs(30)).await);
    let chain: Arc<dyn x402_upto::engine::ChainAccess> = f.chain.clone();
    let e = Engine::new(
        engine_config(),
        Ledger::new(offchain::domain()),
        store,
        Some(chain),
    )
    .expect("engine");
    e.restore().await.expect("restore");
    e
}

async fn pay(
    e: &Engine<PostgresStore>,
    f: &Fixture,
    c: &x402_upto::typed_data::ChannelConfig,
    max: u128,
) -> Result<x402_upto::engine::Paid, x402_upto::engine::Refusal> {
    let header = encode_header(&f.voucher_payload(c, max));
    let resource = ResourceInfo {
        url: "http://localhost/paid".into(),
        description: None,
        mime_type: None,
    };
    match e
        .authorize(Some(header.as_bytes()), PRICE, &resource)
        .await?
    {
        Authorized::Paid(p) => Ok(p),
        Authorized::Refunded(_) => panic!("not a refund"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_authorization_is_sent_once_across_instances() {
    let pg = PgServer::start();
    let f = Fixture::new().await;
    let c = f.config(5);
    let a = engine(&pg, "a", &f).await;
    let b = engine(&pg, "b", &f).await;
    let header = encode_header(&f.deposit_payload(&c, PRICE, 50_000));

    // The estimate refuses it first: nothing was broadcast, so it may come again.
    *f.chain.fail_deposit.lock() = Some(Reason::DepositSimulationFailed);
    let refused = authorize(&a, &header).await.expect_err("refused");
    assert_eq!(refused.reason, Some(Reason::DepositSimulationFailed));
    *f.chain.fail_deposit.lock() = None;

    let paid = authorize(&b, &header).await.expect("deposited through b");
    let calls = f
        .chain
        .deposit_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        f.chain.deposits.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    // The same header at the other instance while b's request runs (its voucher still
    // fits): refused before any estimate or transaction.
    let replay = authorize(&a, &header).await.expect_err("replay refused");
    assert_eq!(replay.reason, Some(Reason::DepositSimulationFailed));
    assert!(
        replay.message.contains("already submitted"),
        "{}",
        replay.message
    );
    assert_eq!(
        f.chain
            .deposit_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        calls
    );
    b.settle(paid, PRICE).await.expect("settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_executed_by_one_instance_is_spent_at_the_others() {
    let pg = PgServer::start();
    let f = Fixture::new().await;
    let c = f.config(6);
    f.fund(&c, 100_000);
    let a = engine(&pg, "a", &f).await;
    let b = engine(&pg, "b", &f).await;
    let paid = pay(&a, &f, &c, PRICE).await.expect("paid");
    a.settle(paid, 700).await.expect("settled");
    // b learns the channel (and caches it) before the refund.
    let _ = b.store().load_all().await.expect("load");
    let seen = pay(&b, &f, &c, 700 + PRICE).await.expect("b serves");
    drop(seen);

    let refund = encode_header(&f.refund_payload(&c, 700, Some(10_000)));
    // b's hold goes back in the background: a refund that meets it is busy, and retried.
    let mut done = false;
    for _ in 0..50 {
        match a
            .authorize(Some(refund.as_bytes()), PRICE, &resource())
            .await
        {
            Ok(Authorized::Refunded(r)) => {
                assert!(r.success);
                done = true;
                break;
            }
            Err(r) if r.reason == Some(Reason::ChannelBusy) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("refund: {other:?}"),
        }
    }
    assert!(done, "the refund was never free to run");
    assert_eq!(f.chain.refunds.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The same refund header at b: b's cache is behind, the store is not.
    let replay = b
        .authorize(Some(refund.as_bytes()), PRICE, &resource())
        .await
        .expect_err("replay refused");
    assert_eq!(replay.reason, Some(Reason::RefundAlreadyExecuted));
    assert_eq!(f.chain.refunds.load(std::sync::atomic::Ordering::SeqCst), 1);
}

fn resource() -> ResourceInfo {
    ResourceInfo {
        url: "http://localhost/paid".into(),
        description: None,
        mime_type: None,
    }
}

async fn authorize(
    e: &Engine<PostgresStore>,
    header: &str,
) -> Result<x402_upto::engine::Paid, x402_upto::engine::Refusal> {
    match e
        .authorize(Some(header.as_bytes()), PRICE, &resource())
        .await?
    {
        Authorized::Paid(p) => Ok(p),
        Authorized::Refunded(_) => panic!("not a refund"),
    }
}
