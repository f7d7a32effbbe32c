//! A smart-wallet payer on anvil, end to end: `MockERC1271Wallet` (owner-key ERC-1271) deposits
//! gaslessly through the server (the token checks the ERC-3009 authorization with ERC-1271),
//! pays vouchers the server verifies with `isValidSignature` over `eth_call`, and the escrow
//! accepts the stored voucher in a claim. A wallet that revokes its key is refused with
//! `voucher_signature` and nothing changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::anvil_fixture::AnvilFixture;
use x402_upto_testkit::devnet::mined;

use alloy_primitives::Address;
use axum::http::StatusCode;
use x402_upto::typed_data::ChannelConfig;

alloy::sol!(
    #[sol(rpc)]
    MockERC1271Wallet,
    "contracts/artifacts/MockERC1271Wallet.json"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_wallet_deposits_pays_and_its_vouchers_are_claimable() {
    // The owner key (anvil:3, the fixture's payer) signs the ERC-3009 authorization and the
    // vouchers; the wallet (`from`, the channel's payer) approves them by ERC-1271.
    let rig = AnvilFixture::unfunded().await;
    let (net, f) = (&rig.net, &rig.f);
    let owner = f.payer.clone();
    let wallet = MockERC1271Wallet::deploy(net.provider.clone(), owner.address())
        .await
        .unwrap();
    let wallet_addr = *wallet.address();
    net.mint(wallet_addr, 1_000_000).await.unwrap();
    // The channel's payer is the wallet; no delegated ECDSA key. Vouchers are signed by the
    // owner key, so they only pass through the wallet's `isValidSignature`.
    let channel = ChannelConfig {
        payer: wallet_addr,
        payerAuthorizer: Address::ZERO,
        ..f.config(1)
    };
    let id = f.id(&channel);

    let p = f.deposit_payload_with(&channel, 1000, 10_000, rig.erc3009(&channel, 10_000, 0x51));
    let a = f.send_ok("/paid?charge=300", &p).await;
    assert_eq!(a.settle().amount.as_deref(), Some("10000"));
    assert_eq!(
        net.balance_of(wallet_addr).await.unwrap(),
        1_000_000 - 10_000
    );
    let a = f
        .send_ok("/paid?charge=1000", &f.voucher_payload(&channel, 1300))
        .await;
    assert_eq!(
        a.settle().payer.as_deref(),
        Some(wallet_addr.to_checksum(None).as_str())
    );

    // The escrow checks the stored voucher with the same ERC-1271 rule: the claim lands.
    let claimable = f.engine.ledger().claimable();
    assert_eq!(claimable.len(), 1);
    assert_eq!(claimable[0].claim_total, 1300);
    rig.client.claim(&claimable).await.unwrap();
    assert_eq!(
        rig.client.channel_state(id).await.unwrap().total_claimed,
        1300
    );

    // The wallet revokes its key: the next voucher is refused and nothing changes.
    mined(wallet.setEnabled(false)).await;
    let before = f.state().await;
    let a = f.send("/paid", &f.voucher_payload(&channel, 2300)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(f.state().await, before);
}
