//! Smart-wallet payers (`payerAuthorizer == 0`) through the payment layer: vouchers are
//! checked with ERC-1271 through `ChainAccess::is_valid_signature` (here an allow-list
//! double), then reserved like any other; a wrong signature is `voucher_signature`, a wallet
//! that cannot be asked is `rpc_read_failed` (402, nothing changes), and ECDSA channels
//! never ask.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use alloy_primitives::Address;
use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Fixture, MockChain, PRICE, WalletChain, config_json};
use x402_upto::Store;
use x402_upto::engine::ColdReadLimits;
use x402_upto::typed_data::{ChannelConfig, ChannelId};
use x402_upto::verify::AllowListErc1271;

const WALLET: Address = Address::repeat_byte(0x77);

struct Setup {
    f: Fixture,
    chain: Arc<WalletChain>,
    config: ChannelConfig,
    id: ChannelId,
}

fn setup() -> Setup {
    let mock = MockChain::shared();
    let chain = Arc::new(WalletChain::new(mock.clone()));
    let f = Fixture::over(chain.clone(), mock);
    // A smart-wallet channel: the payer is a contract, no delegated ECDSA key.
    let config = ChannelConfig {
        payer: WALLET,
        payerAuthorizer: Address::ZERO,
        ..f.config(1)
    };
    let id = f.fund(&config, 10_000);
    Setup {
        f,
        chain,
        config,
        id,
    }
}

impl Setup {
    /// Sets the per-channel pause after a wallet refusal (default 1 s).
    fn backoff(&self, backoff: Duration) {
        self.f.engine.set_cold_read_limits(ColdReadLimits {
            erc1271_backoff: backoff,
            ..ColdReadLimits::default()
        });
    }

    /// The wallet approves the voucher `(id, max)`.
    fn approve(&self, max: u128) {
        self.chain
            .approve(WALLET, self.f.domain().voucher_digest(self.id, max));
    }

    fn wallets(&self) -> parking_lot::MutexGuard<'_, AllowListErc1271> {
        self.chain.wallets.lock()
    }

    /// A voucher payload whose signature is an opaque wallet blob (not 65 bytes: a
    /// multisig-style signature the server cannot parse itself).
    fn payload(&self, kind: &str, max: u128) -> Value {
        let voucher = json!({"channelId": self.id.0, "maxClaimableAmount": max.to_string(),
                             "signature": format!("0x{}", "ab".repeat(97))});
        self.f.payload(
            PRICE,
            json!({"type": kind, "channelConfig": config_json(&self.config), "voucher": voucher}),
        )
    }
}

#[tokio::test]
async fn a_smart_wallet_voucher_is_checked_with_erc1271_and_served() {
    let s = setup();
    s.approve(1000);
    let a =
        s.f.send("/paid?charge=600", &s.payload("voucher", 1000))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let r = a.response();
    assert_eq!(r["payer"], WALLET.to_checksum(None));
    assert_eq!(r["extra"]["chargedAmount"], "600");
    assert_eq!(r["extra"]["channelState"]["chargedCumulativeAmount"], "600");
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 1);

    // The next voucher (600 + 1000) needs its own approval; the stored one is the blob as sent.
    s.approve(1600);
    let a = s.f.send("/paid", &s.payload("voucher", 1600)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.response()["extra"]["chargedAmount"], "1000");
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 2);
    let last = s.f.engine.ledger().last_voucher(&s.id).unwrap();
    assert_eq!(last.signed_max_claimable, 1600);
    assert_eq!(last.signature.len(), 97);
    let stored = s.f.engine.store().load(s.id).await.unwrap().unwrap();
    assert_eq!(stored.charged, 1600);
}

#[tokio::test]
async fn a_signature_the_wallet_rejects_is_voucher_signature_and_changes_nothing() {
    let s = setup();
    s.backoff(Duration::ZERO);
    s.approve(1000);
    assert_eq!(
        s.f.send("/paid", &s.payload("voucher", 1000)).await.status,
        StatusCode::OK
    );
    let before = s.f.state().await;
    // Correct ceiling (2000), but the wallet approved nothing for it.
    let a = s.f.send("/paid", &s.payload("voucher", 2000)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(s.f.state().await, before);
    assert_eq!(s.f.handler_runs.load(Ordering::SeqCst), 1);
    // An approval for another wallet does not help either.
    let digest = s.f.domain().voucher_digest(s.id, 2000);
    {
        let mut w = s.wallets();
        *w = w.clone().allow(Address::repeat_byte(0x78), digest);
    }
    let a = s.f.send("/paid", &s.payload("voucher", 2000)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(s.f.state().await, before);
}

#[tokio::test]
async fn a_wallet_that_cannot_be_asked_is_rpc_read_failed_not_a_500() {
    let s = setup();
    s.approve(1000);
    {
        let mut w = s.wallets();
        *w = w.clone().unreachable();
    }
    let a = s.f.send("/paid", &s.payload("voucher", 1000)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_rpc_read_failed");
    // The channel's chain mirror was loaded (as for any first voucher), nothing was charged,
    // stored or held.
    let (_, stored) = s.f.state().await;
    assert!(stored.is_empty());
    assert_eq!(s.f.engine.ledger().snapshot(&s.id).unwrap().charged, 0);
    assert!(!s.f.engine.ledger().is_held(&s.id));
    assert_eq!(s.f.handler_runs.load(Ordering::SeqCst), 0);
    // The channel is not left held: once the wallet answers, the same voucher is served.
    {
        let mut w = s.wallets();
        let digest = s.f.domain().voucher_digest(s.id, 1000);
        *w = AllowListErc1271::new().allow(WALLET, digest);
    }
    let a = s.f.send("/paid", &s.payload("voucher", 1000)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
}

#[tokio::test]
async fn ecdsa_channels_never_ask_a_wallet() {
    let s = setup();
    {
        let mut w = s.wallets();
        *w = w.clone().unreachable();
    }
    // The fixture's own ECDSA channel (payerAuthorizer = payer key).
    let config = s.f.config(2);
    s.f.fund(&config, 10_000);
    for max in [1000, 2000] {
        let a = s.f.send("/paid", &s.f.voucher_payload(&config, max)).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    }
    // A wallet whose voucher is a plain ECDSA signature by the wallet address itself (an EOA
    // payer with a zero authorizer) passes without a call too, as `SignatureChecker` does.
    let eoa = ChannelConfig {
        payerAuthorizer: Address::ZERO,
        ..s.f.config(3)
    };
    s.f.fund(&eoa, 10_000);
    let a = s.f.send("/paid", &s.f.voucher_payload(&eoa, 1000)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_smart_wallet_refund_is_checked_with_erc1271() {
    let s = setup();
    s.backoff(Duration::ZERO);
    s.approve(1000);
    let a =
        s.f.send("/paid?charge=250", &s.payload("voucher", 1000))
            .await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    // The refund voucher is zero-charge: ceiling = charged = 250.
    let a = s.f.send("/paid", &s.payload("refund", 250)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(s.chain.inner.refunds.load(Ordering::SeqCst), 0);
    s.approve(250);
    let a = s.f.send("/paid", &s.payload("refund", 250)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let r = a.response();
    assert_eq!(r["amount"], "9750");
    assert_eq!(r["payer"], WALLET.to_checksum(None));
    assert_eq!(s.chain.inner.refunds.load(Ordering::SeqCst), 1);
    assert!(s.f.engine.ledger().snapshot(&s.id).is_none());
}

#[tokio::test]
async fn after_a_wallet_refusal_the_channel_waits_before_the_wallet_is_asked_again() {
    let s = setup();
    s.backoff(Duration::from_millis(300));
    s.approve(1000);
    assert_eq!(
        s.f.send("/paid", &s.payload("voucher", 1000)).await.status,
        StatusCode::OK
    );
    // Garbage for the next ceiling: the wallet is asked once and refuses.
    let a = s.f.send("/paid", &s.payload("voucher", 2000)).await;
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_voucher_signature");
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 2);
    // Repeats within the pause cost no call.
    for _ in 0..5 {
        let a = s.f.send("/paid", &s.payload("voucher", 2000)).await;
        assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(a.reason(), "invalid_batch_settlement_evm_rpc_read_failed");
    }
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 2);
    // Other channels are not affected.
    let other = ChannelConfig {
        payer: WALLET,
        payerAuthorizer: Address::ZERO,
        ..s.f.config(9)
    };
    let other_id = s.f.fund(&other, 10_000);
    let digest = s.f.domain().voucher_digest(other_id, 1000);
    {
        let mut w = s.wallets();
        *w = w.clone().allow(WALLET, digest);
    }
    let voucher = json!({"channelId": other_id.0, "maxClaimableAmount": "1000",
                         "signature": format!("0x{}", "ab".repeat(97))});
    let p = s.f.payload(
        PRICE,
        json!({"type": "voucher", "channelConfig": config_json(&other), "voucher": voucher}),
    );
    assert_eq!(s.f.send("/paid", &p).await.status, StatusCode::OK);
    // After the pause the wallet is asked again; an approved voucher is served.
    tokio::time::sleep(Duration::from_millis(350)).await;
    s.approve(2000);
    let a = s.f.send("/paid", &s.payload("voucher", 2000)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(s.chain.calls.load(Ordering::SeqCst), 4);
}
