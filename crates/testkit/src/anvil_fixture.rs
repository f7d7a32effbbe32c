//! The engine fixture on anvil: a [`Fixture`] whose chain access is the real escrow client on a
//! [`Devnet`], the rig of the server, facilitator and gas tests that settle on chain.

use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, U256};
use serde_json::{Value, json};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::engine::{ChainAccess, EngineConfig};
use x402_upto::typed_data::{
    ChannelConfig, ReceiveWithAuthorization, erc3009_deposit_nonce, sign_receive_with_authorization,
};
use x402_upto::wire::Eip155Network;

use crate::devnet::{Devnet, TOKEN_NAME, TOKEN_VERSION};
use crate::fixture::{Fixture, MockChain, engine_config};

/// `validBefore` of the ERC-3009 authorizations built here: far in the future.
const VALID_BEFORE: u64 = 4_000_000_000;

/// Anvil with the contracts and an engine on it. Keys: relayer anvil:1, receiver authorizer
/// anvil:2, payer anvil:3 (`f.payer`), receiver anvil:7.
pub struct AnvilFixture {
    pub net: Devnet,
    pub f: Fixture,
    /// The engine's chain access.
    pub client: Arc<EscrowClient>,
    pub authorizer: PrivateKeySigner,
    /// The key that pays every transaction the server sends.
    pub relayer: Address,
}

impl AnvilFixture {
    /// The rig with `minted` tokens minted to the payer.
    pub async fn start(minted: u128) -> Self {
        let rig = Self::unfunded().await;
        rig.net.mint(rig.f.payer.address(), minted).await.unwrap();
        rig
    }

    /// The rig with nothing minted (the payer's tokens may live elsewhere, e.g. in a wallet).
    pub async fn unfunded() -> Self {
        let net = Devnet::start().await.expect("anvil (run scripts/tools.sh)");
        let authorizer = net.key(2).unwrap();
        let relayer = net.key(1).unwrap();
        let client = Arc::new(net.escrow_client(relayer.clone(), Some(authorizer.clone())));
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
            net.key(3).unwrap(),
        );
        Self {
            net,
            f,
            client,
            authorizer,
            relayer: relayer.address(),
        }
    }

    /// A real ERC-3009 authorization, signed by the fixture's payer key, for a deposit of
    /// `amount` from `config.payer` into `config`'s channel: the `authorization` JSON of a
    /// deposit payload.
    pub fn erc3009(&self, config: &ChannelConfig, amount: u128, salt: u8) -> Value {
        let salt = B256::repeat_byte(salt);
        let auth = self.authorization(config, amount, salt);
        let sig = sign_receive_with_authorization(&self.f.payer, &self.net.token_domain(), &auth)
            .unwrap();
        json!({"validAfter": "0", "validBefore": VALID_BEFORE.to_string(), "salt": salt,
               "signature": format!("0x{}", hex::encode(sig.as_bytes()))})
    }

    /// The `ReceiveWithAuthorization` a deposit of `amount` into `config`'s channel with
    /// `salt` is made of.
    pub fn authorization(
        &self,
        config: &ChannelConfig,
        amount: u128,
        salt: B256,
    ) -> ReceiveWithAuthorization {
        ReceiveWithAuthorization {
            from: config.payer,
            to: self.net.collector,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: U256::from(VALID_BEFORE),
            nonce: erc3009_deposit_nonce(self.f.id(config), salt),
        }
    }

    /// Transactions the relayer has sent (mined or pending).
    pub async fn relayer_nonce(&self) -> u64 {
        self.net.nonce(self.relayer).await
    }
}
