//! `EscrowClient` on a real anvil: ERC-3009 deposits signed in Rust, channel state reads,
//! relayed claims built from the ledger, sweeps, refunds with and without a claim, and the
//! ERC-1271 checker's negative paths (the positive path, with `MockERC1271Wallet`, is in
//! `tests/server/erc1271_anvil.rs`).

use std::sync::Arc;

use alloy::providers::{Provider, ProviderBuilder};
use alloy_primitives::{Address, B256, Bytes, U256};
use x402_upto::chain::bindings::{IUptoEscrow, UptoEscrow};
use x402_upto::chain::escrow::{ChainError, Erc3009Deposit};
use x402_upto::ledger::Claimable;
use x402_upto::typed_data::{
    ChannelConfig, ChannelId, ReceiveWithAuthorization, erc3009_deposit_nonce,
    sign_receive_with_authorization,
};
use x402_upto::verify::Erc1271Checker;
use x402_upto::{Ledger, Reason};
use x402_upto_testkit::devnet::mined;
use x402_upto_testkit::offchain::signed_voucher;
use x402_upto_testkit::settlement_fixture::SettlementFixture as Fixture;

const DEPOSIT: u128 = 1_000_000;

async fn fixture() -> Fixture {
    Fixture::start(10 * DEPOSIT).await
}

fn authorization(f: &Fixture, config: &ChannelConfig, amount: u128, salt: u8) -> Erc3009Deposit {
    let id = f.net.domain().channel_id(config);
    let salt = B256::repeat_byte(salt);
    let auth = ReceiveWithAuthorization {
        from: f.payer.address(),
        to: f.net.collector,
        value: U256::from(amount),
        validAfter: U256::ZERO,
        validBefore: U256::from(u64::MAX),
        nonce: erc3009_deposit_nonce(id, salt),
    };
    let sig =
        sign_receive_with_authorization(&f.payer, &f.net.token_domain(), &auth).expect("sign");
    Erc3009Deposit {
        valid_after: U256::ZERO,
        valid_before: U256::from(u64::MAX),
        salt,
        signature: Bytes::copy_from_slice(&sig.as_bytes()),
    }
}

/// Opens a channel through the client and serves requests costing `charges` (price
/// 10_000 each) through a fresh ledger; returns the ledger and channel id.
async fn open_and_serve(f: &Fixture, salt: u8, charges: &[u128]) -> (Ledger, ChannelId) {
    let config = f.config(salt);
    let auth = authorization(f, &config, DEPOSIT, salt);
    let out = f
        .client
        .deposit_erc3009(&config, DEPOSIT, &auth)
        .await
        .expect("deposit");
    let ledger = Ledger::new(f.net.domain());
    let (id, _) = ledger.upsert_from_chain(config, out.state, 0);
    for &actual in charges {
        let charged = ledger.snapshot(&id).expect("known").charged;
        let max = charged + 10_000;
        let voucher = signed_voucher(&f.payer, ledger.domain(), id, max);
        let r = ledger
            .verify_and_reserve(voucher, 10_000)
            .expect("accepted");
        r.commit(actual, 1)
            .expect("within price")
            .apply()
            .expect("held");
    }
    (ledger, id)
}

#[tokio::test]
async fn a_deposit_signed_in_rust_opens_the_channel_and_reads_back() {
    let f = fixture().await;
    let config = f.config(1);
    let auth = authorization(&f, &config, DEPOSIT, 1);
    let out = f
        .client
        .deposit_erc3009(&config, DEPOSIT, &auth)
        .await
        .expect("deposit");
    assert_eq!(out.state.balance, DEPOSIT);
    assert_eq!(out.state.total_claimed, 0);
    assert_eq!(out.state.withdraw_requested_at, 0);
    assert_eq!(out.state.refund_nonce, U256::ZERO);
    let id = f.net.domain().channel_id(&config);
    assert_eq!(f.client.channel_state(id).await.expect("read"), out.state);
    assert_eq!(f.payer_balance().await, 9 * DEPOSIT);
}

#[tokio::test]
async fn a_replayed_or_forged_deposit_fails_simulation_without_sending() {
    let f = fixture().await;
    let config = f.config(1);
    let auth = authorization(&f, &config, DEPOSIT, 1);
    f.client
        .deposit_erc3009(&config, DEPOSIT, &auth)
        .await
        .expect("first deposit");
    let replay = f.client.deposit_erc3009(&config, DEPOSIT, &auth).await;
    let err = replay.expect_err("the ERC-3009 nonce is used");
    assert_eq!(err.reason(), Reason::DepositSimulationFailed);
    assert!(err.nothing_sent());

    let mut forged = authorization(&f, &config, DEPOSIT, 2);
    forged.salt = B256::repeat_byte(3);
    let err = f
        .client
        .deposit_erc3009(&config, DEPOSIT, &forged)
        .await
        .expect_err("signature does not match the nonce");
    assert_eq!(err.reason(), Reason::DepositSimulationFailed);
    let id = f.net.domain().channel_id(&config);
    assert_eq!(
        f.client.channel_state(id).await.expect("read").balance,
        DEPOSIT
    );
}

#[tokio::test]
async fn claims_charged_not_the_ceiling_and_a_replay_is_a_no_op() {
    let f = fixture().await;
    let (ledger, id) = open_and_serve(&f, 1, &[3_000, 7_000, 1]).await;
    let rows = ledger.claimable();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].claim_total, 10_001);
    assert_eq!(rows[0].max_claimable, 20_000);
    let out = f.client.claim(&rows).await.expect("claim");
    assert_eq!(out.rows, 1);
    assert_eq!(out.claimed, vec![(id, 10_001)]);
    assert!(out.gas_used > 0);
    assert_eq!(f.total_claimed(id).await, 10_001);

    // The same rows again: mined, but nothing moves.
    let again = f.client.claim(&rows).await.expect("replay");
    assert!(again.claimed.is_empty());
    assert_eq!(f.total_claimed(id).await, 10_001);

    let settled = f
        .client
        .settle(f.receiver, f.net.token)
        .await
        .expect("settle");
    assert_eq!(settled.amount, 10_001);
    assert!(settled.tx_hash.is_some());
    assert_eq!(f.net.balance_of(f.receiver).await.expect("bal"), 10_001);
    let nothing = f
        .client
        .settle(f.receiver, f.net.token)
        .await
        .expect("settle");
    assert_eq!((nothing.tx_hash, nothing.amount), (None, 0));
}

#[tokio::test]
async fn one_transaction_claims_many_channels() {
    let f = fixture().await;
    let mut rows: Vec<Claimable> = Vec::new();
    for salt in 1..=5u8 {
        let (ledger, _) = open_and_serve(&f, salt, &[u128::from(salt) * 100]).await;
        rows.extend(ledger.claimable());
    }
    let out = f.client.claim(&rows).await.expect("claim");
    assert_eq!(out.claimed.len(), 5);
    for row in &rows {
        let state = f.client.channel_state(row.channel_id).await.expect("read");
        assert_eq!(state.total_claimed, row.claim_total);
    }
    assert_eq!(
        f.client
            .unsettled(f.receiver, f.net.token)
            .await
            .expect("read"),
        1_500
    );
}

#[tokio::test]
async fn a_claim_for_another_receiver_authorizer_is_refused_before_sending() {
    let f = fixture().await;
    let (ledger, _) = open_and_serve(&f, 1, &[500]).await;
    let mut rows = ledger.claimable();
    rows[0].config.receiverAuthorizer = Address::repeat_byte(9);
    let err = f.client.claim(&rows).await.expect_err("not ours");
    assert_eq!(err.reason(), Reason::ReceiverAuthorizerMismatch);
    assert!(matches!(
        f.client.claim(&[]).await,
        Err(ChainError::EmptyBatch)
    ));
}

#[tokio::test]
async fn refund_without_claim_returns_the_unclaimed_balance() {
    let f = fixture().await;
    let (_, id) = open_and_serve(&f, 1, &[]).await;
    let config = f.config(1);
    let out = f
        .client
        .refund(&config, 400_000, None)
        .await
        .expect("refund");
    assert_eq!(out.refunded, 400_000);
    assert_eq!(out.state.balance, DEPOSIT - 400_000);
    assert_eq!(out.state.refund_nonce, U256::from(1));
    // Asking for more than is left refunds only what is left.
    let out = f
        .client
        .refund(&config, u128::MAX, None)
        .await
        .expect("refund");
    assert_eq!(out.refunded, DEPOSIT - 400_000);
    assert_eq!(f.client.channel_state(id).await.expect("read").balance, 0);
    assert_eq!(f.payer_balance().await, 10 * DEPOSIT);
}

#[tokio::test]
async fn refund_with_claim_pays_the_receiver_first_then_returns_the_rest() {
    let f = fixture().await;
    let (ledger, id) = open_and_serve(&f, 1, &[2_500, 2_500]).await;
    let rows = ledger.claimable();
    let config = f.config(1);
    let out = f
        .client
        .refund(&config, u128::MAX, rows.first())
        .await
        .expect("claim + refund");
    assert_eq!(out.refunded, DEPOSIT - 5_000);
    assert_eq!(out.state.total_claimed, 5_000);
    assert_eq!(out.state.balance, 5_000);
    assert_eq!(f.payer_balance().await, 10 * DEPOSIT - 5_000);
    f.client
        .settle(f.receiver, f.net.token)
        .await
        .expect("settle");
    assert_eq!(f.net.balance_of(f.receiver).await.expect("bal"), 5_000);
    assert_eq!(
        f.client.channel_state(id).await.expect("read").refund_nonce,
        U256::from(1)
    );
}

#[tokio::test]
async fn a_pending_withdrawal_shows_in_channel_state() {
    let f = fixture().await;
    let (_, id) = open_and_serve(&f, 1, &[]).await;
    let as_payer = UptoEscrow::new(f.net.escrow, f.net.provider_for(&f.payer));
    mined(as_payer.initiateWithdraw(IUptoEscrow::ChannelConfig::from(&f.config(1)), 1_000)).await;
    let state = f.client.channel_state(id).await.expect("read");
    assert!(state.withdraw_requested_at > 0);
    assert_eq!(state.balance, DEPOSIT);
}

#[tokio::test]
async fn erc1271_is_false_for_an_eoa_or_a_non_wallet_contract_and_an_error_when_unreachable() {
    let f = fixture().await;
    let digest = B256::repeat_byte(7);
    let sig = [1u8; 65];
    let eoa = f.payer.address();
    assert!(
        !f.client
            .is_valid_signature(eoa, digest, &sig)
            .await
            .expect("asked")
    );
    assert!(
        !f.client
            .is_valid_signature(f.net.escrow, digest, &sig)
            .await
            .expect("asked")
    );
    // Nothing listens on port 9 of localhost.
    let dead = ProviderBuilder::new()
        .connect_http("http://127.0.0.1:9".parse().expect("url"))
        .erased();
    let offline = f.net.escrow_client_over(
        dead,
        Arc::new(f.net.tx_sender(f.net.key(6).expect("key"))),
        None,
    );
    let err = offline
        .is_valid_signature(eoa, digest, &sig)
        .await
        .expect_err("unreachable");
    assert_eq!(err.wallet, eoa);
    let read = offline
        .channel_state(ChannelId(digest))
        .await
        .expect_err("unreachable");
    assert_eq!(read.reason(), Reason::RpcReadFailed);
}
