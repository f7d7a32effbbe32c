//! A smart-wallet payer on anvil, end to end: `MockERC1271Wallet` (owner-key ERC-1271) deposits
//! gaslessly through the server (the token checks the ERC-3009 authorization with ERC-1271),
//! pays vouchers the server verifies with `isValidSignature` over `eth_call`, and the escrow
//! accepts the stored voucher in a claim. A wallet that revokes its key is refused with
//! `voucher_signature` and nothing changes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::Arc;

use alloy_primitives::{Address, B256, U256};
use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Fixture, MockChain, engine_config};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::engine::{ChainAccess, EngineConfig};
use x402_upto::typed_data::{
    ChannelConfig, ReceiveWithAuthorization, erc3009_deposit_nonce, sign_receive_with_authorization,
};
use x402_upto::wire::Eip155Network;
use x402_upto_testkit::devnet::{Devnet, TOKEN_NAME, TOKEN_VERSION};

alloy::sol!(
    #[sol(rpc)]
    MockERC1271Wallet,
    "contracts/artifacts/MockERC1271Wallet.json"
);

/// The owner key signs the ERC-3009 authorization; the wallet (`from`) approves it by ERC-1271.
fn erc3009(net: &Devnet, f: &Fixture, config: &ChannelConfig, amount: u128) -> Value {
    let salt = B256::repeat_byte(0x51);
    let auth = ReceiveWithAuthorization {
        from: config.payer,
        to: net.collector,
        value: U256::from(amount),
        validAfter: U256::ZERO,
        validBefore: U256::from(4_000_000_000u64),
        nonce: erc3009_deposit_nonce(f.id(config), salt),
    };
    let sig = sign_receive_with_authorization(&f.payer, &net.token_domain(), &auth).unwrap();
    json!({"validAfter": "0", "validBefore": "4000000000", "salt": salt,
           "signature": format!("0x{}", hex::encode(sig.as_bytes()))})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smart_wallet_deposits_pays_and_its_vouchers_are_claimable() {
    let net = Devnet::start().await.expect("anvil (run scripts/tools.sh)");
    let authorizer = net.key(2).unwrap();
    let owner = net.key(3).unwrap();
    let wallet = MockERC1271Wallet::deploy(net.provider.clone(), owner.address())
        .await
        .unwrap();
    let wallet_addr = *wallet.address();
    net.mint(wallet_addr, 1_000_000).await.unwrap();
    let client = Arc::new(EscrowClient::new(
        net.provider.clone(),
        net.escrow,
        net.collector,
        Arc::new(net.tx_sender(net.key(1).unwrap())),
        Some(authorizer.clone()),
        net.domain(),
    ));
    let config = EngineConfig {
        network: Eip155Network(net.chain_id),
        pay_to: net.key(7).unwrap().address(),
        asset: net.token,
        asset_name: TOKEN_NAME.into(),
        asset_version: TOKEN_VERSION.into(),
        receiver_authorizer: authorizer.address(),
        ..engine_config()
    };
    let access: Arc<dyn ChainAccess> = client.clone();
    let f = Fixture::with(
        config,
        net.domain(),
        access,
        Arc::new(MockChain::default()),
        owner,
    );
    // The channel's payer is the wallet; no delegated ECDSA key. Vouchers are signed by the
    // owner key, so they only pass through the wallet's `isValidSignature`.
    let channel = ChannelConfig {
        payer: wallet_addr,
        payerAuthorizer: Address::ZERO,
        ..f.config(1)
    };
    let id = f.id(&channel);

    let p = f.deposit_payload_with(&channel, 1000, 10_000, erc3009(&net, &f, &channel, 10_000));
    let a = f.send("/paid?charge=300", &p).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.settle().amount.as_deref(), Some("10000"));
    assert_eq!(
        net.balance_of(wallet_addr).await.unwrap(),
        1_000_000 - 10_000
    );
    let a = f
        .send("/paid?charge=1000", &f.voucher_payload(&channel, 1300))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(
        a.settle().payer.as_deref(),
        Some(wallet_addr.to_checksum(None).as_str())
    );

    // The escrow checks the stored voucher with the same ERC-1271 rule: the claim lands.
    let claimable = f.engine.ledger().claimable();
    assert_eq!(claimable.len(), 1);
    assert_eq!(claimable[0].claim_total, 1300);
    client.claim(&claimable).await.unwrap();
    assert_eq!(client.channel_state(id).await.unwrap().total_claimed, 1300);

    // The wallet revokes its key: the next voucher is refused and nothing changes.
    wallet
        .setEnabled(false)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let before = f.state().await;
    let a = f.send("/paid", &f.voucher_payload(&channel, 2300)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(f.state().await, before);
}
