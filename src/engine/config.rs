//! What the engine offers: [`EngineConfig`], the fixed part of every `accepts[]` entry.

use alloy_primitives::Address;
use serde_json::{Map, Value};

use crate::typed_data::EscrowDomain;
use crate::wire::Eip155Network;

/// Longest withdraw delay the escrow accepts (30 days).
pub const MAX_WITHDRAW_DELAY: u64 = 2_592_000;
/// Shortest withdraw delay the escrow accepts (15 minutes).
pub const MIN_WITHDRAW_DELAY: u64 = 900;

/// What this server offers: the fixed part of every `accepts[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// CAIP-2 network; its chain id must be the escrow domain's.
    pub network: Eip155Network,
    /// `payTo`: the channel receiver.
    pub pay_to: Address,
    /// The token (`asset`, the channel's `token`).
    pub asset: Address,
    /// The token's EIP-712 `name` (the client signs the ERC-3009 deposit with it).
    pub asset_name: String,
    /// The token's EIP-712 `version`.
    pub asset_version: String,
    /// `extra.receiverAuthorizer`: signs claims and refunds.
    pub receiver_authorizer: Address,
    /// `extra.withdrawDelay` in seconds (900 ..= 2,592,000).
    pub withdraw_delay: u64,
    /// `maxTimeoutSeconds` of the offer.
    pub max_timeout_seconds: u64,
    /// More `extra` keys to advertise (e.g. `minDeposit`); ours win on a clash.
    pub extra: Map<String, Value>,
}

impl EngineConfig {
    /// Checks the values the escrow would refuse.
    pub fn validate(&self, domain: &EscrowDomain) -> Result<(), ConfigError> {
        if !(MIN_WITHDRAW_DELAY..=MAX_WITHDRAW_DELAY).contains(&self.withdraw_delay) {
            return Err(ConfigError(format!(
                "withdrawDelay {} is outside {MIN_WITHDRAW_DELAY}..={MAX_WITHDRAW_DELAY}",
                self.withdraw_delay
            )));
        }
        if self.network.chain_id() != domain.chain_id() {
            return Err(ConfigError(format!(
                "network {} is not the escrow domain's chain {}",
                self.network,
                domain.chain_id()
            )));
        }
        if self.pay_to == Address::ZERO || self.receiver_authorizer == Address::ZERO {
            return Err(ConfigError(
                "payTo and receiverAuthorizer must be non-zero".into(),
            ));
        }
        Ok(())
    }
}

/// A configuration the engine refuses to run with (the message names the value).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<ConfigError> for String {
    fn from(e: ConfigError) -> Self {
        e.0
    }
}
