//! Claims: a stale read never rolls claim state back, and no claim is sent for a channel
//! whose latest on-chain `totalClaimed` already covers it.

use std::sync::Arc;

use alloy::providers::Provider;
use axum::http::StatusCode;
use x402_upto::chain::bindings::{IUptoEscrow, UptoEscrow};
use x402_upto::ledger::OnchainState;
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig, Watcher, WatcherConfig};
use x402_upto_testkit::devnet::mined;

use super::anvil;

fn quiet() -> SettlementConfig {
    SettlementConfig {
        claim_threshold: u128::MAX,
        claim_interval: std::time::Duration::from_secs(3_600),
        settle_interval: std::time::Duration::from_secs(3_600),
        tick: std::time::Duration::from_secs(3_600),
        confirmations: 0,
        ..SettlementConfig::default()
    }
}

/// The sequence: the payer starts a withdrawal, the scheduler claims at once, then the
/// watcher reads the channel at the (older) confirmed block of the `WithdrawInitiated` event.
/// That read must not lower the mirrored `totalClaimed`, and the next round sends nothing.
#[tokio::test]
async fn a_watcher_read_at_an_older_block_does_not_roll_back_a_claim_nor_cause_a_second_one() {
    let a = anvil().await;
    let f = &a.f;
    let config = f.config(1);
    let id = f.id(&config);
    let p = f.deposit_payload_with(&config, 1000, 100_000, a.erc3009(&config, 100_000, 1));
    let r = f.send("/paid?charge=700", &p).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = f.send("/paid", &f.voucher_payload(&config, 1700)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let charged = 1700;

    let ledger = f.engine.ledger().clone();
    let head = a.net.provider.get_block_number().await.unwrap();
    let mut watcher = Watcher::new(
        Arc::clone(&a.client),
        ledger.clone(),
        WatcherConfig {
            confirmations: 2,
            ..WatcherConfig::default()
        },
        None,
        head + 1,
    );
    let settlement = Settlement::new(
        ledger.clone(),
        Arc::clone(&a.client),
        ClaimJournal::open(f.engine.store()).unwrap(),
        quiet(),
    );

    let as_payer = UptoEscrow::new(a.net.escrow, a.net.provider_for(&f.payer));
    let receipt =
        mined(as_payer.initiateWithdraw(IUptoEscrow::ChannelConfig::from(&config), 50_000)).await;
    assert!(receipt.status());
    let withdraw_block = receipt.block_number.unwrap();

    // Unconfirmed: the watcher mirrors the withdrawal at once; the scheduler claims at once.
    let report = watcher.poll_once().await.unwrap();
    assert_eq!(report.withdrawals, 1);
    let round = settlement.claim_round(false).await;
    assert_eq!((round.batches, round.rows), (1, 1), "{round:?}");
    assert_eq!(
        a.client.channel_state(id).await.unwrap().total_claimed,
        charged
    );
    assert_eq!(ledger.snapshot(&id).unwrap().total_claimed, charged);

    // One more block: the withdrawal's block is confirmed, the claim's is not. The watcher
    // reads the channel at the withdrawal's block, where nothing was claimed yet.
    a.net.mine().await.unwrap();
    let report = watcher.poll_once().await.unwrap();
    assert_eq!(report.processed_to, Some(withdraw_block), "{report:?}");
    assert_eq!(report.refreshed, 1);
    let s = ledger.snapshot(&id).unwrap();
    assert_eq!(
        s.total_claimed, charged,
        "stale read rolled totalClaimed back"
    );
    assert_ne!(s.withdraw_requested_at, 0);
    assert!(ledger.claimable().is_empty());

    let nonce = a.relayer_nonce().await;
    let round = settlement.claim_round(false).await;
    assert_eq!((round.batches, round.rows), (0, 0), "{round:?}");
    assert_eq!(
        a.relayer_nonce().await,
        nonce,
        "a claim was sent for nothing"
    );
}

/// However the mirror fell behind (here: forced back by hand, as a lagging node's answer
/// would), the scheduler reads the latest `totalClaimed` before sending and drops a row
/// chain already covers: no transaction, and the ledger catches up.
#[tokio::test]
async fn a_row_already_claimed_on_chain_is_dropped_before_sending() {
    let a = anvil().await;
    let f = &a.f;
    let config = f.config(2);
    let id = f.id(&config);
    let p = f.deposit_payload_with(&config, 1000, 100_000, a.erc3009(&config, 100_000, 2));
    assert_eq!(f.send("/paid?charge=900", &p).await.status, StatusCode::OK);
    let ledger = f.engine.ledger().clone();
    let settlement = Settlement::new(
        ledger.clone(),
        Arc::clone(&a.client),
        ClaimJournal::open(f.engine.store()).unwrap(),
        SettlementConfig {
            claim_threshold: 1,
            ..quiet()
        },
    );
    assert_eq!(settlement.claim_round(false).await.batches, 1);
    let on_chain = a.client.channel_state(id).await.unwrap();
    assert_eq!(on_chain.total_claimed, 900);

    // An authoritative refresh with an out-of-date answer (what a lagging RPC node gives).
    let stale = OnchainState {
        total_claimed: 0,
        ..on_chain
    };
    ledger.refresh(&id, stale, 1).unwrap();
    assert_eq!(ledger.claimable().len(), 1);
    let nonce = a.relayer_nonce().await;
    let round = settlement.claim_round(false).await;
    assert_eq!(
        (round.batches, round.already_claimed, round.failed_rows),
        (0, 1, 0),
        "{round:?}"
    );
    assert_eq!(a.relayer_nonce().await, nonce);
    assert_eq!(ledger.snapshot(&id).unwrap().total_claimed, 900);
    assert!(ledger.claimable().is_empty());
}

/// Variation without a chain: the watcher's kind of read (`Ledger::observe`) never lowers
/// `totalClaimed` or `refundNonce`, while the other fields follow the read; the
/// authoritative `refresh` (journal reconciliation, full re-reads after a reorg) still can.
#[tokio::test]
async fn observed_reads_only_move_claim_state_up() {
    let f = super::support::Fixture::new().await;
    let config = f.config(3);
    let id = f.fund(&config, 10_000);
    assert_eq!(
        f.send("/paid?charge=600", &f.voucher_payload(&config, 1000))
            .await
            .status,
        StatusCode::OK
    );
    let ledger = f.engine.ledger();
    ledger.apply_claim(&id, 600, 1).unwrap();
    let mut newer = OnchainState {
        balance: 10_000,
        total_claimed: 600,
        refund_nonce: alloy_primitives::U256::from(2),
        ..Default::default()
    };
    ledger.observe(&id, newer, 2).unwrap();
    let older = OnchainState {
        balance: 9_000,
        total_claimed: 0,
        withdraw_requested_at: 77,
        refund_nonce: alloy_primitives::U256::from(1),
    };
    let s = ledger.observe(&id, older, 3).unwrap();
    assert_eq!((s.total_claimed, s.refund_nonce), (600, newer.refund_nonce));
    assert_eq!((s.balance, s.withdraw_requested_at), (9_000, 77));
    assert!(ledger.claimable().is_empty());
    // A reorg that really dropped the claim is corrected by an authoritative read.
    newer.total_claimed = 0;
    let s = ledger.refresh(&id, newer, 4).unwrap();
    assert_eq!(s.total_claimed, 0);
    assert_eq!(ledger.claimable().len(), 1);
}
