//! `PaymentPayload` (the `PAYMENT-SIGNATURE` header) and the three
//! batch-settlement payload kinds a client sends: `deposit`, `voucher`,
//! `refund`.

use alloy_primitives::{Address, B256, Bytes, U256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::WireError;
use super::requirements::{PaymentRequirements, ResourceInfo};

/// Body of the `PAYMENT-SIGNATURE` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentPayload {
    /// Must be 2.
    pub x402_version: u64,
    /// Echo of the resource (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceInfo>,
    /// The offer the client chose, copied whole.
    pub accepted: PaymentRequirements,
    /// Scheme-specific body; see [`BatchPayload::parse`].
    pub payload: Value,
    /// Extensions, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Map<String, Value>>,
}

/// `channelConfig` as JSON: the immutable channel parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelConfigWire {
    /// Owner of the deposited funds.
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub payer: Address,
    /// EOA that signs vouchers, or zero for ERC-1271 checks against `payer`.
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub payer_authorizer: Address,
    /// Server's payment destination (`payTo`).
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub receiver: Address,
    /// Signs claim batches and refunds (`extra.receiverAuthorizer`).
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub receiver_authorizer: Address,
    /// ERC-20 token (`asset`).
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub token: Address,
    /// Seconds before a timed withdrawal completes; a `uint40` on chain.
    pub withdraw_delay: u64,
    /// Distinguishes channels with otherwise equal parameters.
    pub salt: B256,
}

/// `voucher`: a cumulative ceiling signed by the payer side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoucherFields {
    /// Channel the voucher is for; must equal the config's hash.
    pub channel_id: B256,
    /// Cumulative amount the server may claim.
    #[serde(with = "super::decimal_u128")]
    pub max_claimable_amount: u128,
    /// EIP-712 signature (65 bytes for an EOA; any length for ERC-1271).
    pub signature: Bytes,
}

/// ERC-3009 `receiveWithAuthorization` parameters for a gasless deposit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Erc3009Authorization {
    /// Not valid before this unix time.
    #[serde(with = "super::decimal_u256")]
    pub valid_after: U256,
    /// Not valid at or after this unix time.
    #[serde(with = "super::decimal_u256")]
    pub valid_before: U256,
    /// Nonce salt: the token nonce is `keccak256(abi.encode(channelId, salt))`.
    pub salt: B256,
    /// Signature over `ReceiveWithAuthorization` in the token's domain.
    pub signature: Bytes,
}

/// `permitted` of a Permit2 authorization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Permitted {
    /// Token.
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub token: Address,
    /// Amount.
    #[serde(with = "super::decimal_u256")]
    pub amount: U256,
}

/// `witness` of a Permit2 deposit authorization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Witness {
    /// Channel the deposit is bound to.
    pub channel_id: B256,
}

/// Permit2 deposit authorization (parsed so it can be rejected precisely;
/// this engine deposits through ERC-3009 only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Permit2Authorization {
    /// Token owner.
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub from: Address,
    /// Token and amount.
    pub permitted: Permit2Permitted,
    /// Expected spender (the Permit2 collector).
    #[serde(serialize_with = "super::encoding::checksummed")]
    pub spender: Address,
    /// Permit2 nonce.
    #[serde(with = "super::decimal_u256")]
    pub nonce: U256,
    /// Expiry.
    #[serde(with = "super::decimal_u256")]
    pub deadline: U256,
    /// Channel binding.
    pub witness: Permit2Witness,
    /// Signature.
    pub signature: Bytes,
}

/// Exactly one of the two authorizations must be present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositAuthorization {
    /// ERC-3009 path (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erc3009_authorization: Option<Erc3009Authorization>,
    /// Permit2 path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permit2_authorization: Option<Permit2Authorization>,
}

/// `deposit` of a deposit payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepositFields {
    /// Amount to deposit, atomic units.
    #[serde(with = "super::decimal_u128")]
    pub amount: u128,
    /// How the tokens are pulled.
    pub authorization: DepositAuthorization,
}

/// Optional `amount` of a refund payload (absent = full refund).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundFields {
    /// Requested refund, or `None` for everything unclaimed.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::decimal_u128::option"
    )]
    pub amount: Option<u128>,
}

/// A parsed batch-settlement client payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchPayload {
    /// Open or top up a channel, and pay for this request.
    Deposit {
        /// Channel parameters.
        channel_config: ChannelConfigWire,
        /// Voucher for this request.
        voucher: VoucherFields,
        /// Deposit amount and authorization (boxed: the largest variant).
        deposit: Box<DepositFields>,
    },
    /// Pay for this request from an open channel.
    Voucher {
        /// Channel parameters.
        channel_config: ChannelConfigWire,
        /// Voucher for this request.
        voucher: VoucherFields,
    },
    /// Ask for a cooperative refund (zero-charge voucher).
    Refund {
        /// Channel parameters.
        channel_config: ChannelConfigWire,
        /// Zero-charge voucher (`maxClaimableAmount == charged`).
        voucher: VoucherFields,
        /// Partial refund amount, or `None` for a full refund.
        amount: Option<u128>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Common {
    channel_config: ChannelConfigWire,
    voucher: VoucherFields,
}

#[derive(Deserialize)]
struct DepositOnly {
    deposit: DepositFields,
}

impl BatchPayload {
    /// Parses `PaymentPayload.payload`. Unknown keys are ignored, as the spec
    /// lets clients add fields.
    pub fn parse(payload: &Value) -> Result<Self, WireError> {
        let kind = match payload.get("type") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => return Err(WireError::PayloadType(other.to_string())),
            None => return Err(WireError::PayloadType(String::new())),
        };
        let (kind, label) = match kind {
            "deposit" => (0, "deposit"),
            "voucher" => (1, "voucher"),
            "refund" => (2, "refund"),
            other => return Err(WireError::PayloadType(other.to_owned())),
        };
        let err = |source| WireError::Payload {
            kind: label,
            source,
        };
        let Common {
            channel_config,
            voucher,
        } = Common::deserialize(payload).map_err(err)?;
        Ok(match kind {
            0 => {
                let DepositOnly { deposit } = DepositOnly::deserialize(payload).map_err(err)?;
                Self::Deposit {
                    channel_config,
                    voucher,
                    deposit: Box::new(deposit),
                }
            }
            1 => Self::Voucher {
                channel_config,
                voucher,
            },
            _ => {
                let RefundFields { amount } = RefundFields::deserialize(payload).map_err(err)?;
                Self::Refund {
                    channel_config,
                    voucher,
                    amount,
                }
            }
        })
    }

    /// The payload's `type` string.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Deposit { .. } => "deposit",
            Self::Voucher { .. } => "voucher",
            Self::Refund { .. } => "refund",
        }
    }

    /// Channel parameters (every kind has them).
    pub const fn channel_config(&self) -> &ChannelConfigWire {
        match self {
            Self::Deposit { channel_config, .. }
            | Self::Voucher { channel_config, .. }
            | Self::Refund { channel_config, .. } => channel_config,
        }
    }

    /// The signed voucher (every kind has one).
    pub const fn voucher(&self) -> &VoucherFields {
        match self {
            Self::Deposit { voucher, .. }
            | Self::Voucher { voucher, .. }
            | Self::Refund { voucher, .. } => voucher,
        }
    }

    /// Serializes back to the JSON the spec shows.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.kind().into()));
        // Our own types serialize infallibly.
        m.insert(
            "channelConfig".into(),
            serde_json::to_value(self.channel_config()).unwrap_or_default(),
        );
        m.insert(
            "voucher".into(),
            serde_json::to_value(self.voucher()).unwrap_or_default(),
        );
        match self {
            Self::Deposit { deposit, .. } => {
                m.insert(
                    "deposit".into(),
                    serde_json::to_value(deposit).unwrap_or_default(),
                );
            }
            Self::Refund {
                amount: Some(a), ..
            } => {
                m.insert("amount".into(), Value::String(a.to_string()));
            }
            _ => {}
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Value {
        json!({"payer": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
               "payerAuthorizer": "0x857b06519E91e3A54538791bDbb0E22373e36b66",
               "receiver": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
               "receiverAuthorizer": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
               "token": "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
               "withdrawDelay": 900, "salt": format!("0x{}", "00".repeat(32))})
    }

    fn voucher() -> Value {
        json!({"channelId": format!("0x{}", "ab".repeat(32)), "maxClaimableAmount": "5000",
               "signature": format!("0x{}", "11".repeat(65))})
    }

    #[test]
    fn parses_each_kind_and_round_trips() {
        let dep = json!({"type": "deposit", "channelConfig": config(), "voucher": voucher(),
            "deposit": {"amount": "100000", "authorization": {"erc3009Authorization": {
                "validAfter": "0", "validBefore": "1770000000",
                "salt": format!("0x{}", "22".repeat(32)), "signature": format!("0x{}", "33".repeat(65))}}}});
        let v = json!({"type": "voucher", "channelConfig": config(), "voucher": voucher()});
        let r = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(), "amount": "1500"});
        let full = json!({"type": "refund", "channelConfig": config(), "voucher": voucher()});
        for (raw, kind) in [
            (&dep, "deposit"),
            (&v, "voucher"),
            (&r, "refund"),
            (&full, "refund"),
        ] {
            let p = BatchPayload::parse(raw).unwrap();
            assert_eq!(p.kind(), kind);
            assert_eq!(&p.to_value(), raw);
        }
        match BatchPayload::parse(&r).unwrap() {
            BatchPayload::Refund { amount, .. } => assert_eq!(amount, Some(1500)),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            BatchPayload::parse(&v)
                .unwrap()
                .voucher()
                .max_claimable_amount,
            5000
        );
    }

    #[test]
    fn names_the_failing_kind() {
        assert!(matches!(
            BatchPayload::parse(&json!({})),
            Err(WireError::PayloadType(_))
        ));
        assert!(matches!(
            BatchPayload::parse(&json!({"type": 3})),
            Err(WireError::PayloadType(_))
        ));
        assert!(
            matches!(BatchPayload::parse(&json!({"type": "claim"})), Err(WireError::PayloadType(t)) if t == "claim")
        );
        let missing_sig = json!({"type": "voucher", "channelConfig": config(),
            "voucher": {"channelId": format!("0x{}", "ab".repeat(32)), "maxClaimableAmount": "1"}});
        assert!(matches!(
            BatchPayload::parse(&missing_sig),
            Err(WireError::Payload {
                kind: "voucher",
                ..
            })
        ));
        let no_deposit =
            json!({"type": "deposit", "channelConfig": config(), "voucher": voucher()});
        assert!(matches!(
            BatchPayload::parse(&no_deposit),
            Err(WireError::Payload {
                kind: "deposit",
                ..
            })
        ));
        let bad_amount = json!({"type": "refund", "channelConfig": config(), "voucher": voucher(), "amount": "-1"});
        assert!(matches!(
            BatchPayload::parse(&bad_amount),
            Err(WireError::Payload { kind: "refund", .. })
        ));
    }
}
