//! The chain watcher on a real anvil: deposits are mirrored only once confirmed, a reorg
//! that drops a processed deposit is detected and undone, and a withdrawal is acted on at
//! once (service refused, claim scheduler woken) even before it is confirmed.

use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::B256;
use tokio::sync::Notify;
use x402_upto::Ledger;
use x402_upto::chain::bindings::{IUptoEscrow, UptoEscrow};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::settlement::{Watcher, WatcherConfig};
use x402_upto::typed_data::{ChannelConfig, ChannelId};
use x402_upto_testkit::devnet::{Devnet, mined};
use x402_upto_testkit::settlement_fixture::SettlementFixture;

const DEPOSIT: u128 = 100_000;

struct Fixture {
    net: Devnet,
    client: Arc<EscrowClient>,
    payer: PrivateKeySigner,
    config: ChannelConfig,
    id: ChannelId,
    ledger: Ledger,
}

async fn fixture() -> Fixture {
    let kit = SettlementFixture::start(10 * DEPOSIT).await;
    let id = kit.open(1, DEPOSIT, 0).await;
    Fixture {
        config: kit.config(1),
        id,
        net: kit.net,
        client: kit.client,
        payer: kit.payer,
        ledger: kit.ledger,
    }
}

impl Fixture {
    async fn watcher(&self, confirmations: u64, wake: Option<Arc<Notify>>) -> Watcher {
        let head = self.net.provider.get_block_number().await.expect("head");
        Watcher::new(
            Arc::clone(&self.client),
            self.ledger.clone(),
            WatcherConfig {
                confirmations,
                ..WatcherConfig::default()
            },
            wake,
            head + 1,
        )
    }

    async fn top_up(&self, salt: u8) {
        self.net
            .deposit(&self.payer, &self.config, DEPOSIT, B256::repeat_byte(salt))
            .await
            .expect("top-up");
    }

    fn balance(&self) -> u128 {
        self.ledger.snapshot(&self.id).expect("known").balance
    }
}

#[tokio::test]
async fn a_deposit_is_mirrored_only_once_it_has_the_configured_confirmations() {
    let f = fixture().await;
    let mut w = f.watcher(2, None).await;
    f.top_up(2).await;
    let report = w.poll_once().await.expect("poll");
    assert_eq!(report.refreshed, 0);
    assert_eq!(f.balance(), DEPOSIT);
    f.net.mine().await.expect("mine");
    f.net.mine().await.expect("mine");
    let report = w.poll_once().await.expect("poll");
    assert_eq!(report.refreshed, 1);
    assert_eq!(f.balance(), 2 * DEPOSIT);
    // Nothing new: nothing refreshed.
    assert_eq!(w.poll_once().await.expect("poll").refreshed, 0);
}

#[tokio::test]
async fn a_reorg_that_drops_a_processed_deposit_is_detected_and_undone() {
    let f = fixture().await;
    let mut w = f.watcher(0, None).await;
    // One processed block before the deposit, so the rewind has a block to resume from.
    f.net.mine().await.expect("mine");
    assert!(w.poll_once().await.expect("poll").processed_to.is_some());
    f.top_up(2).await;
    let report = w.poll_once().await.expect("poll");
    assert_eq!(report.refreshed, 1);
    assert_eq!(f.balance(), 2 * DEPOSIT);

    // Replace the deposit's block with an empty one.
    let head_before = f.net.provider.get_block_number().await.expect("head");
    f.net.reorg_one_block().await.expect("anvil_reorg");
    assert_eq!(
        f.client.channel_state(f.id).await.expect("read").balance,
        DEPOSIT,
        "the deposit is gone from the chain"
    );
    assert_eq!(
        f.net.provider.get_block_number().await.expect("head"),
        head_before
    );
    let report = w.poll_once().await.expect("poll");
    assert!(report.reorg);
    assert_eq!(f.balance(), DEPOSIT);
    assert!(w.poll_once().await.is_ok());
    assert_eq!(f.balance(), DEPOSIT);
}

#[tokio::test]
async fn an_unconfirmed_withdrawal_stops_service_and_wakes_the_scheduler_at_once() {
    let f = fixture().await;
    let wake = Arc::new(Notify::new());
    let mut w = f.watcher(10, Some(Arc::clone(&wake))).await;
    let as_payer = UptoEscrow::new(f.net.escrow, f.net.provider_for(&f.payer));
    mined(as_payer.initiateWithdraw(IUptoEscrow::ChannelConfig::from(&f.config), DEPOSIT)).await;
    let woken = wake.notified();
    let report = w.poll_once().await.expect("poll");
    assert_eq!(report.withdrawals, 1);
    assert!(report.processed_to.is_none(), "not confirmed yet");
    tokio::time::timeout(Duration::from_secs(1), woken)
        .await
        .expect("scheduler woken");
    assert_ne!(
        f.ledger
            .snapshot(&f.id)
            .expect("known")
            .withdraw_requested_at,
        0
    );
}
