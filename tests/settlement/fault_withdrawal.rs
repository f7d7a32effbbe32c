//! A payer initiates a withdrawal while the server is down (for less than `withdrawDelay`).
//! On restart the server must claim everything it charged before `finalizeWithdraw` can
//! succeed, and refuse further service on that channel.

use std::sync::Arc;
use std::time::Duration;

use x402_upto::chain::bindings::{IUptoEscrow, UptoEscrow};
use x402_upto::ledger::Detail;
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig};
use x402_upto::{Durability, Ledger, Reason, SledOptions, SledStore, Store};
use x402_upto_testkit::devnet::mined;
use x402_upto_testkit::offchain::signed_voucher;
use x402_upto_testkit::settlement_fixture::SettlementFixture;

const DEPOSIT: u128 = 1_000_000;
const PRICE: u128 = 10_000;

#[tokio::test]
async fn a_withdrawal_started_while_the_server_was_down_is_claimed_before_it_can_finalize() {
    let kit = SettlementFixture::start(DEPOSIT).await;
    let id = kit.deposit(1, DEPOSIT).await;
    let (net, payer, receiver, config) = (&kit.net, kit.payer.clone(), kit.receiver, kit.config(1));
    let client = Arc::clone(&kit.client);
    let dir = tempfile::tempdir().expect("tempdir");
    let open_store = || {
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
            .map(Arc::new)
            .expect("store")
    };
    // Only the withdrawal may trigger a claim here.
    let config_s = SettlementConfig {
        claim_threshold: u128::MAX,
        claim_interval: Duration::from_secs(3_600),
        settle_interval: Duration::from_secs(3_600),
        tick: Duration::from_secs(3_600),
        ..SettlementConfig::default()
    };

    // First life: serve 20 requests of 7_000 each, durably; nothing is claimed.
    let charged = {
        let store = open_store();
        let ledger = Ledger::new(net.domain());
        let state = client.channel_state(id).await.expect("read");
        ledger.upsert_from_chain(config.clone(), state, 0);
        let handle = Settlement::new(
            ledger.clone(),
            Arc::clone(&client),
            ClaimJournal::open(&store).expect("journal"),
            config_s.clone(),
        )
        .spawn();
        let mut charged = 0;
        for _ in 0..20 {
            let max = charged + PRICE;
            let voucher = signed_voucher(&payer, ledger.domain(), id, max);
            let staged = ledger
                .verify_and_reserve(voucher, PRICE)
                .expect("accepted")
                .commit(7_000, 1)
                .expect("within price");
            x402_upto::store::persist(store.as_ref(), staged)
                .await
                .expect("durable");
            charged += 7_000;
        }
        handle.shutdown().await;
        charged
    };
    assert_eq!(
        client.channel_state(id).await.expect("read").total_claimed,
        0
    );

    // Down: the payer starts withdrawing everything; half the delay (900 s) passes.
    let as_payer = UptoEscrow::new(net.escrow, net.provider_for(&payer));
    let onchain_config = IUptoEscrow::ChannelConfig::from(&config);
    mined(as_payer.initiateWithdraw(onchain_config.clone(), DEPOSIT)).await;
    net.increase_time(450).await.expect("time");
    assert!(
        as_payer
            .finalizeWithdraw(onchain_config.clone())
            .call()
            .await
            .is_err(),
        "the delay has not elapsed yet"
    );

    // Restart: restore from the store, start settlement; it re-reads chain and claims at once.
    let store = open_store();
    let ledger = Ledger::new(net.domain());
    ledger.restore(store.load_all().await.expect("load"));
    assert_eq!(ledger.snapshot(&id).expect("restored").charged, charged);
    let handle = Settlement::new(
        ledger.clone(),
        Arc::clone(&client),
        ClaimJournal::open(&store).expect("journal"),
        config_s,
    )
    .spawn();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.channel_state(id).await.expect("read").total_claimed != charged {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not claimed after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still before the delay ran out: the claim beat the finalization.
    assert!(
        as_payer
            .finalizeWithdraw(onchain_config.clone())
            .call()
            .await
            .is_err()
    );

    // No more service on this channel.
    let max = charged + PRICE;
    let refused = ledger
        .verify_and_reserve(signed_voucher(&payer, ledger.domain(), id, max), PRICE)
        .expect_err("withdrawal pending");
    assert_eq!(refused.reason, Reason::CumulativeExceedsBalance);
    assert!(matches!(refused.detail, Detail::WithdrawalPending { .. }));

    // The delay runs out: the payer gets back exactly what was not charged.
    net.increase_time(500).await.expect("time");
    mined(as_payer.finalizeWithdraw(onchain_config)).await;
    assert_eq!(
        net.balance_of(payer.address()).await.expect("bal"),
        DEPOSIT - charged
    );
    handle.settlement().settle_round().await.expect("settle");
    assert_eq!(net.balance_of(receiver).await.expect("bal"), charged);
    handle.shutdown().await;
}
