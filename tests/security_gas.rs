//! Issue 10, part 2: the relayer's gas is spent only where a transaction is due.
//!
//! - `deposits`: concurrent duplicates of one deposit header, and replays of a used ERC-3009
//!   authorization, cost no transaction (single flight per channel and per authorization).
//! - `refunds`: a refund request is honoured once; partial refunds have a minimum and a
//!   per-channel rate.
//! - `claims`: a stale watcher read never rolls claim state back, and no claim row is sent
//!   for a channel already claimed on chain.
//!
//! Each refusal is checked for its status, reason, unchanged state, and (on anvil) an
//! unchanged relayer nonce. The anvil rig is the engine fixture of `server_support` over the
//! real escrow client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

#[path = "security_gas/claims.rs"]
mod claims;
#[path = "security_gas/deposits.rs"]
mod deposits;
#[path = "security_gas/refunds.rs"]
mod refunds;

use std::sync::Arc;

use alloy::providers::Provider;
use alloy_primitives::{Address, B256, U256};
use serde_json::{Value, json};
use support::{Fixture, MockChain, engine_config};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::engine::{ChainAccess, EngineConfig};
use x402_upto::typed_data::{
    ChannelConfig, ReceiveWithAuthorization, erc3009_deposit_nonce, sign_receive_with_authorization,
};
use x402_upto::wire::Eip155Network;
use x402_upto_testkit::devnet::{Devnet, TOKEN_NAME, TOKEN_VERSION};

/// The engine fixture over the escrow on anvil.
pub(crate) struct Anvil {
    pub(crate) net: Devnet,
    pub(crate) f: Fixture,
    pub(crate) client: Arc<EscrowClient>,
    /// The key that pays every transaction the server sends.
    pub(crate) relayer: Address,
}

/// Tokens minted to the payer.
pub(crate) const MINTED: u128 = 10_000_000;

pub(crate) async fn anvil() -> Anvil {
    let net = Devnet::start().await.expect("anvil (run scripts/tools.sh)");
    let authorizer = net.key(2).unwrap();
    let payer = net.key(3).unwrap();
    let relayer = net.key(1).unwrap();
    let client = Arc::new(EscrowClient::new(
        net.provider.clone(),
        net.escrow,
        net.collector,
        Arc::new(net.tx_sender(relayer.clone())),
        Some(authorizer.clone()),
        net.domain(),
    ));
    net.mint(payer.address(), MINTED).await.unwrap();
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
        payer,
    );
    Anvil {
        net,
        f,
        client,
        relayer: relayer.address(),
    }
}

impl Anvil {
    /// A real ERC-3009 authorization by the payer for a deposit of `amount` into `config`.
    pub(crate) fn erc3009(&self, config: &ChannelConfig, amount: u128, salt: u8) -> Value {
        let id = self.f.id(config);
        let salt = B256::repeat_byte(salt);
        let valid_before = U256::from(4_000_000_000u64);
        let auth = ReceiveWithAuthorization {
            from: config.payer,
            to: self.net.collector,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: erc3009_deposit_nonce(id, salt),
        };
        let sig = sign_receive_with_authorization(&self.f.payer, &self.net.token_domain(), &auth)
            .unwrap();
        json!({"validAfter": "0", "validBefore": valid_before.to_string(), "salt": salt,
               "signature": format!("0x{}", hex::encode(sig.as_bytes()))})
    }

    /// Transactions the relayer has sent (mined or pending).
    pub(crate) async fn relayer_nonce(&self) -> u64 {
        self.net
            .provider
            .get_transaction_count(self.relayer)
            .await
            .expect("nonce")
    }
}
