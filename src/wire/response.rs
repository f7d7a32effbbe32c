//! `SettleResponse` (the `PAYMENT-RESPONSE` header and facilitator `/settle`
//! answer), `VerifyResponse`, `/supported`, and the batch-settlement channel
//! snapshot carried in their `extra`.

use alloy_primitives::{B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Server-side view of a channel as the spec serializes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStateWire {
    /// The channel id (EIP-712 hash of its config).
    pub channel_id: B256,
    /// Deposited minus withdrawn/refunded (mirrored from chain).
    #[serde(with = "super::decimal_u128")]
    pub balance: u128,
    /// Claimed on chain so far (mirrored from chain).
    #[serde(with = "super::decimal_u128")]
    pub total_claimed: u128,
    /// Unix time a timed withdrawal started, 0 if none (a JSON number).
    pub withdraw_requested_at: u64,
    /// Next refund nonce (a decimal string).
    #[serde(with = "super::decimal_u256")]
    pub refund_nonce: U256,
    /// Sum of actual charges; absent in facilitator answers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::decimal_u128::option"
    )]
    pub charged_cumulative_amount: Option<u128>,
}

/// The last voucher the server holds, sent in a corrective 402 so the client
/// can check its own signature before adopting the server's cumulative.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherStateWire {
    /// `maxClaimableAmount` of that voucher.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::decimal_u128::option"
    )]
    pub signed_max_claimable: Option<u128>,
    /// The client's signature over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Bytes>,
}

/// `extra` of a batch-settlement `SettleResponse`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentResponseExtra {
    /// What this request actually cost (≤ the offer's amount). Absent for refunds.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::decimal_u128::option"
    )]
    pub charged_amount: Option<u128>,
    /// Channel snapshot after this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_state: Option<ChannelStateWire>,
    /// Present only when a server chooses to echo it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voucher_state: Option<VoucherStateWire>,
    /// Anything else, passed through.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// Body of `PAYMENT-RESPONSE`, and a facilitator's `/settle` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the payment (or settlement action) succeeded.
    pub success: bool,
    /// Reason code on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Human-readable detail on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// Who paid (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash, `""` when nothing was broadcast (vouchers).
    pub transaction: String,
    /// CAIP-2 network.
    pub network: String,
    /// Amount moved on chain: deposit or refund amount; `""` for vouchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// Batch-settlement details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<PaymentResponseExtra>,
    /// Extension results, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// A facilitator's `/verify` answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// Whether the payload would be accepted.
    pub is_valid: bool,
    /// Reason code when not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Human-readable detail when not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Channel snapshot (`channelId`, `balance`, …) for batch-settlement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// `GET /supported` answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedResponse {
    /// Scheme/network pairs this facilitator handles.
    pub kinds: Vec<SupportedKind>,
    /// Supported extension names.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Relayer addresses per CAIP-2 pattern.
    #[serde(default)]
    pub signers: Map<String, Value>,
}

/// One supported scheme/network pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// Protocol version.
    pub x402_version: u64,
    /// Scheme name.
    pub scheme: String,
    /// CAIP-2 network.
    pub network: String,
    /// For batch-settlement: `{ "receiverAuthorizer": … }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn voucher_response_matches_the_spec_shape() {
        let spec = json!({
            "success": true, "transaction": "", "network": "eip155:8453",
            "payer": "0x857b06519e91e3a54538791bdbb0e22373e36b66", "amount": "",
            "extra": {"chargedAmount": "700", "channelState": {
                "channelId": "0xabc1230000000000000000000000000000000000000000000000000000000000",
                "balance": "100000", "totalClaimed": "3200", "withdrawRequestedAt": 0,
                "refundNonce": "1", "chargedCumulativeAmount": "3900"}}
        });
        let r: SettleResponse = serde_json::from_value(spec.clone()).unwrap();
        let extra = r.extra.as_ref().unwrap();
        assert_eq!(extra.charged_amount, Some(700));
        let cs = extra.channel_state.as_ref().unwrap();
        assert_eq!(
            (cs.balance, cs.total_claimed, cs.charged_cumulative_amount),
            (100_000, 3200, Some(3900))
        );
        assert_eq!(cs.refund_nonce, U256::from(1));
        // Re-serializing yields the same JSON value (field order aside).
        assert_eq!(serde_json::to_value(&r).unwrap(), spec);
    }

    #[test]
    fn withdraw_requested_at_is_a_number_and_nonce_a_string() {
        let cs = ChannelStateWire {
            channel_id: B256::ZERO,
            balance: 1,
            total_claimed: 0,
            withdraw_requested_at: 1_700_000_000,
            refund_nonce: U256::from(7),
            charged_cumulative_amount: None,
        };
        let v = serde_json::to_value(&cs).unwrap();
        assert_eq!(v["withdrawRequestedAt"], json!(1_700_000_000u64));
        assert_eq!(v["refundNonce"], json!("7"));
        assert!(v.get("chargedCumulativeAmount").is_none());
    }

    #[test]
    fn rejects_non_decimal_amounts_in_channel_state() {
        let bad = json!({"channelId": format!("0x{}", "00".repeat(32)), "balance": "0x10",
            "totalClaimed": "0", "withdrawRequestedAt": 0, "refundNonce": "0"});
        assert!(serde_json::from_value::<ChannelStateWire>(bad).is_err());
    }
}
