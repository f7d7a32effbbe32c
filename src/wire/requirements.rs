//! `PaymentRequired` (the 402 offer) and `PaymentRequirements` (one entry of
//! `accepts[]`), with the `batch-settlement` view of `extra`.

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::encoding::parse_u128;
use super::network::Eip155Network;
use super::response::{ChannelStateWire, VoucherStateWire};

/// The only protocol version this crate speaks.
pub const X402_VERSION: u64 = 2;
/// The scheme name on the wire. (x402's own `upto` is a one-shot Permit2
/// payment; our per-request "upto" pricing lives inside this scheme.)
pub const BATCH_SETTLEMENT: &str = "batch-settlement";

/// Body of the `PAYMENT-REQUIRED` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u64,
    /// Reason code when this 402 answers a failed payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for.
    pub resource: ResourceInfo,
    /// Payment options the client may choose from.
    pub accepts: Vec<PaymentRequirements>,
    /// Protocol extensions, passed through untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// Describes the protected resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// Absolute URL of the resource.
    pub url: String,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// MIME type of the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
}

/// One payment option. Kept string-typed, as the spec defines it for every
/// scheme, so that `accepted` can be compared field by field with what we
/// offered; typed accessors parse on demand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `batch-settlement` for us.
    pub scheme: String,
    /// CAIP-2 network, e.g. `eip155:8453`.
    pub network: String,
    /// Per-request maximum in atomic units (the "upto" price).
    pub amount: String,
    /// Token address.
    pub asset: String,
    /// Receiver address (the channel's `receiver`).
    pub pay_to: String,
    /// How long the client may take to pay.
    pub max_timeout_seconds: u64,
    /// Scheme-specific parameters; see [`BatchSettlementExtra`].
    #[serde(default)]
    pub extra: Map<String, Value>,
}

impl PaymentRequirements {
    /// The amount as an integer, if it is a strict decimal.
    pub fn amount_u128(&self) -> Option<u128> {
        parse_u128(&self.amount)
    }

    /// The network, if it is an `eip155` CAIP-2 id.
    pub fn eip155_network(&self) -> Option<Eip155Network> {
        self.network.parse().ok()
    }

    /// The `extra` object read as batch-settlement parameters.
    pub fn batch_extra(&self) -> Result<BatchSettlementExtra, serde_json::Error> {
        serde_json::from_value(Value::Object(self.extra.clone()))
    }
}

/// `extra` of a batch-settlement offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchSettlementExtra {
    /// Signs claims and refunds; becomes `ChannelConfig.receiverAuthorizer`.
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub receiver_authorizer: Address,
    /// Seconds a payer's timed withdrawal must wait (900 ..= 2,592,000).
    pub withdraw_delay: u64,
    /// EIP-712 domain name of the token (for the ERC-3009 deposit).
    pub name: String,
    /// EIP-712 domain version of the token.
    pub version: String,
    /// `eip3009` (default) or `permit2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_transfer_method: Option<String>,
    /// Corrective 402 only: the server's channel snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<ChannelStateWire>,
    /// Corrective 402 only: the last voucher the server holds, as proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher_state: Option<VoucherStateWire>,
    /// Keys other servers add (e.g. the TypeScript SDK's `minDeposit`).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_spec_offer() {
        let r: PaymentRequirements = serde_json::from_value(json!({
            "scheme": "batch-settlement", "network": "eip155:8453", "amount": "100000",
            "asset": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C", "maxTimeoutSeconds": 3600,
            "extra": {"receiverAuthorizer": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
                      "withdrawDelay": 900, "name": "USDC", "version": "2", "minDeposit": "10000"}
        }))
        .unwrap();
        assert_eq!(r.amount_u128(), Some(100_000));
        assert_eq!(r.eip155_network().map(|n| n.chain_id()), Some(8453));
        let extra = r.batch_extra().unwrap();
        assert_eq!(extra.withdraw_delay, 900);
        assert_eq!(extra.other["minDeposit"], "10000");
        assert!(extra.channel_state.is_none());
    }

    #[test]
    fn omits_absent_optional_fields() {
        let pr = PaymentRequired {
            x402_version: 2,
            error: None,
            resource: ResourceInfo {
                url: "http://x/y".into(),
                ..Default::default()
            },
            accepts: vec![],
            extensions: None,
        };
        assert_eq!(
            serde_json::to_string(&pr).unwrap(),
            r#"{"x402Version":2,"resource":{"url":"http://x/y"},"accepts":[]}"#
        );
    }
}
