//! The sled store: compare-and-set, reload, durability modes, failure paths.

use std::sync::Arc;

use x402_upto::store::{CHANNELS_TREE, PersistError, StoreError, persist};
use x402_upto::typed_data::ChannelId;
use x402_upto::{ChannelRecord, Durability, Ledger, SledOptions, SledStore, Store};

use crate::helpers::{config, domain, ledger_with_channel, onchain, payer, stage, voucher};

fn open(dir: &std::path::Path, durability: Durability) -> SledStore {
    SledStore::open(dir, SledOptions::with_durability(durability)).expect("open store")
}

/// The fields the store must reproduce exactly (mirrored fields are refreshed from chain).
fn durable_part(r: &ChannelRecord) -> (ChannelId, u128, u128, Vec<u8>, u64, u64) {
    (
        r.channel_id,
        r.charged,
        r.signed_max_claimable,
        r.signature.to_vec(),
        r.last_request_at,
        r.version,
    )
}

async fn charge(
    ledger: &Ledger,
    store: &SledStore,
    id: ChannelId,
    price: u128,
    actual: u128,
) -> x402_upto::Receipt {
    let key = payer(1);
    let charged = ledger.snapshot(&id).map(|s| s.charged).unwrap_or_default();
    let staged = stage(ledger, voucher(&key, id, charged + price), price, actual, 7);
    persist(store, staged).await.expect("persist")
}

#[tokio::test]
async fn acknowledged_commits_survive_reopening_in_every_durable_mode() {
    for mode in [Durability::Group, Durability::Every, Durability::None] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ledger, id, _) = ledger_with_channel(1_000);
        {
            let store = open(dir.path(), mode);
            for _ in 0..5 {
                charge(&ledger, &store, id, 10, 4).await;
            }
            // `none` promises nothing before a flush; a clean drop flushes.
        }
        let store = open(dir.path(), mode);
        let loaded = store.load_all().await.expect("load");
        assert_eq!(loaded.len(), 1, "{mode:?}");
        let want = ledger.record(&id).expect("known");
        assert_eq!(durable_part(&loaded[0]), durable_part(&want), "{mode:?}");
        assert_eq!((want.charged, want.version), (20, 5));
    }
}

#[tokio::test]
async fn a_restarted_ledger_continues_from_the_stored_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, id, key) = ledger_with_channel(1_000);
    {
        let store = open(dir.path(), Durability::Group);
        charge(&ledger, &store, id, 100, 30).await;
    }
    let store = open(dir.path(), Durability::Group);
    let restarted = Ledger::new(domain());
    assert_eq!(restarted.restore(store.load_all().await.expect("load")), 1);
    restarted.upsert_from_chain(config(key.address(), 1), onchain(1_000), 9);
    let err = restarted
        .verify_and_reserve(voucher(&key, id, 100), 100)
        .map_err(|r| r.reason);
    assert_eq!(err.err(), Some(x402_upto::Reason::CumulativeAmountMismatch));
    let receipt = charge(&restarted, &store, id, 100, 100).await;
    assert_eq!((receipt.snapshot.charged, receipt.version), (130, 2));
}

#[tokio::test]
async fn compare_and_set_refuses_a_stale_version_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Durability::Group);
    let (ledger, id, _) = ledger_with_channel(1_000);
    charge(&ledger, &store, id, 10, 10).await;
    let mut stale = ledger.record(&id).expect("known");
    stale.charged = 1;
    let err = store
        .compare_and_set(None, &stale)
        .await
        .expect_err("exists");
    assert!(matches!(
        err,
        StoreError::Conflict {
            expected: None,
            found: Some(1),
            ..
        }
    ));
    let err = store
        .compare_and_set(Some(7), &stale)
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::Conflict { found: Some(1), .. }));
    assert_eq!(
        store.load(id).await.expect("load").map(|r| r.charged),
        Some(10)
    );
}

#[tokio::test]
async fn a_conflicting_write_releases_the_channel_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Durability::Group);
    let (ledger, id, key) = ledger_with_channel(1_000);
    // Another writer got there first.
    let mut other = ledger.record(&id).expect("known");
    other.version = 1;
    let ticket = store.compare_and_set(None, &other).await.expect("write");
    store.wait_durable(ticket).await.expect("durable");

    let before = ledger.record(&id);
    let staged = stage(&ledger, voucher(&key, id, 10), 10, 10, 1);
    let err = persist(&store, staged).await.expect_err("conflict");
    assert!(matches!(
        err,
        PersistError::Store(StoreError::Conflict { .. })
    ));
    assert_eq!(ledger.record(&id), before);
    assert!(!ledger.is_held(&id));
}

#[tokio::test]
async fn remove_checks_the_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Durability::Every);
    let (ledger, id, _) = ledger_with_channel(1_000);
    charge(&ledger, &store, id, 10, 10).await;
    assert!(matches!(
        store.remove(id, 2).await,
        Err(StoreError::Conflict { .. })
    ));
    let removed = ledger.remove(&id).expect("idle");
    let ticket = store.remove(id, removed.version).await.expect("remove");
    store.wait_durable(ticket).await.expect("durable");
    assert_eq!(store.load(id).await.expect("load"), None);
}

#[tokio::test]
async fn the_claim_journal_tree_is_separate_from_channel_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), Durability::Group);
    let journal = store.claim_journal().expect("tree");
    journal
        .insert(b"claim-1", b"pending".as_slice())
        .expect("insert");
    assert!(store.load_all().await.expect("load").is_empty());
}

#[tokio::test]
async fn a_corrupt_store_is_refused_instead_of_records_being_skipped() {
    let cases: [&[u8]; 2] = [
        b"\x01garbage",                                 // header too short: refused at open
        b"\x01\x00\x00\x00\x00\x00\x00\x00\x05garbage", // payload does not decode
    ];
    for value in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("sled");
            let tree = db.open_tree(CHANNELS_TREE).expect("tree");
            tree.insert([7u8; 32], value).expect("insert");
            db.flush().expect("flush");
        }
        let result =
            match SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group)) {
                Ok(store) => store.load_all().await.map(|_| ()),
                Err(e) => Err(e),
            };
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{value:?}: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_committers_in_group_mode_are_all_acknowledged_and_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open(dir.path(), Durability::Group));
    let ledger = Ledger::new(domain());
    let key = payer(1);
    let ids: Vec<ChannelId> = (0..32)
        .map(|i| {
            ledger
                .upsert_from_chain(config(key.address(), i), onchain(1_000_000), 0)
                .0
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids.clone() {
        let (ledger, store) = (ledger.clone(), store.clone());
        tasks.spawn(async move {
            for _ in 0..10 {
                charge(&ledger, &store, id, 5, 5).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    drop(tasks);
    let store = Arc::into_inner(store).expect("sole owner");
    drop(store);
    let reopened = open(dir.path(), Durability::None);
    let loaded = reopened.load_all().await.expect("load");
    assert_eq!(loaded.len(), 32);
    assert!(loaded.iter().all(|r| r.charged == 50 && r.version == 10));
}

/// A reopened store knows every stored version for compare-and-set, whether its version
/// cache was filled by `load_all`'s scan (a restart) or by a scan of its own before the first
/// write (a tool that writes without loading), and whichever comes first.
#[tokio::test]
async fn a_reopened_store_knows_every_stored_version_with_or_without_load_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ledger, id, _) = ledger_with_channel(1_000);
    let mut others = Vec::new();
    {
        let store = open(dir.path(), Durability::Group);
        for _ in 0..3 {
            charge(&ledger, &store, id, 10, 4).await;
        }
        for salt in 2u64..40 {
            let cfg = config(payer(1).address(), salt);
            let mut r = ChannelRecord::from_chain(domain().channel_id(&cfg), cfg, onchain(9), 0);
            r.version = salt;
            store.compare_and_set(None, &r).await.expect("seed");
            others.push(r);
        }
    }
    let stored = ledger.record(&id).expect("known");
    assert_eq!(stored.version, 3);
    for load_first in [true, false] {
        let store = open(dir.path(), Durability::Group);
        if load_first {
            assert_eq!(store.load_all().await.expect("load").len(), 39);
        }
        let mut next = stored.clone();
        next.version = 4;
        for wrong in [None, Some(2), Some(4)] {
            assert!(
                matches!(
                    store.compare_and_set(wrong, &next).await,
                    Err(StoreError::Conflict { found: Some(3), .. })
                ),
                "load_all first: {load_first}, expected {wrong:?}"
            );
        }
        let mut other = others[usize::from(load_first)].clone();
        other.version += 1;
        assert!(matches!(
            store.compare_and_set(None, &other).await,
            Err(StoreError::Conflict { .. })
        ));
        let ticket = store
            .compare_and_set(Some(other.version - 1), &other)
            .await
            .expect("the stored version is the expected one");
        store.wait_durable(ticket).await.expect("durable");
        if !load_first {
            // The cache a write filled stays; a later load_all sees the tree as it is.
            assert_eq!(store.load_all().await.expect("load").len(), 39);
        }
    }
}

/// Group mode acknowledges a write once it is in the write-ahead log, before sled has it on
/// disk. Opening replays the log, so acknowledged writes survive even if sled never flushed
/// them: here sled's files are replaced by an empty database, and the log alone restores
/// every channel, including a removal, at its last acknowledged version.
#[tokio::test]
async fn writes_acknowledged_from_the_log_are_restored_into_a_sled_that_lost_them() {
    let logged = tempfile::tempdir().expect("tempdir");
    let (ledger, id, _) = ledger_with_channel(1_000);
    let removed = {
        let store = open(logged.path(), Durability::Group);
        for _ in 0..4 {
            charge(&ledger, &store, id, 10, 3).await;
        }
        let cfg = config(payer(1).address(), 77);
        let r = ChannelRecord::from_chain(domain().channel_id(&cfg), cfg, onchain(5), 0);
        let t = store.compare_and_set(None, &r).await.expect("put");
        store.wait_durable(t).await.expect("durable");
        let t = store.remove(r.channel_id, r.version).await.expect("remove");
        store.wait_durable(t).await.expect("durable");
        r.channel_id
    };
    // A store directory whose sled knows nothing, with the first store's log.
    let empty = tempfile::tempdir().expect("tempdir");
    drop(open(empty.path(), Durability::None));
    std::fs::copy(
        logged.path().join("channels.wal"),
        empty.path().join("channels.wal"),
    )
    .expect("copy log");
    for mode in [Durability::None, Durability::Group] {
        let store = open(empty.path(), mode);
        let loaded = store.load_all().await.expect("load");
        assert_eq!(loaded.len(), 1, "{mode:?}");
        let want = ledger.record(&id).expect("known");
        assert_eq!(durable_part(&loaded[0]), durable_part(&want), "{mode:?}");
        assert_eq!((want.charged, want.version), (12, 4));
        assert!(store.load(removed).await.expect("load").is_none());
    }
}
