//! `PAYMENT-SIGNATURE` → a checked batch-settlement payload, or the reason it is refused.
//!
//! The order of checks follows the cost of each: size and base64 first, JSON, version,
//! `accepted` against our offer, payload shape, channel config against the offer, and the
//! channel id (one keccak). Signatures and ledger rules come after, in the engine.

use alloy::primitives::aliases::U40;
use serde_json::Value;

use crate::engine::EngineConfig;
use crate::ledger::Reject;
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::wire::{
    BATCH_SETTLEMENT, BatchPayload, ChannelConfigWire, HeaderError, MAX_PAYMENT_HEADER_BYTES,
    PaymentPayload, PaymentRequirements, WireError, X402_VERSION, accepted_matches, decode_header,
};

/// A payload that passed every stateless check.
#[derive(Clone, Debug)]
pub(crate) struct Checked {
    pub(crate) payload: BatchPayload,
    pub(crate) config: ChannelConfig,
    pub(crate) channel_id: ChannelId,
}

/// A stateless refusal: the reason and a short explanation, for no channel yet.
fn stateless(reason: Reason, message: String) -> Reject {
    Reject::explained(reason, None, message)
}

/// Decodes and checks a `PAYMENT-SIGNATURE` value against `offer`.
pub(crate) fn decode(
    raw: &[u8],
    offer: &PaymentRequirements,
    ours: &EngineConfig,
    domain: &EscrowDomain,
) -> Result<Checked, Reject> {
    let value: Value = decode_header(raw, MAX_PAYMENT_HEADER_BYTES).map_err(header_reject)?;
    if !value.is_object() {
        return Err(stateless(
            Reason::InvalidPayload,
            "PaymentPayload is not a JSON object".into(),
        ));
    }
    match value.get("x402Version").and_then(Value::as_u64) {
        Some(X402_VERSION) => {}
        Some(v) => {
            return Err(stateless(
                Reason::InvalidX402Version,
                format!("x402Version {v}"),
            ));
        }
        None => {
            return Err(stateless(
                Reason::InvalidX402Version,
                "x402Version missing or not a number".into(),
            ));
        }
    }
    let payment: PaymentPayload = serde_json::from_value(value)
        .map_err(|e| stateless(Reason::InvalidPayload, format!("PaymentPayload: {e}")))?;
    let accepted = &payment.accepted;
    if accepted.scheme != BATCH_SETTLEMENT {
        return Err(stateless(
            Reason::InvalidScheme,
            format!("scheme {:?}", clip(&accepted.scheme)),
        ));
    }
    if accepted.network != offer.network {
        return Err(stateless(
            Reason::NetworkMismatch,
            format!(
                "network {:?}, expected {}",
                clip(&accepted.network),
                offer.network
            ),
        ));
    }
    if !accepted_matches(offer, accepted) {
        return Err(stateless(
            Reason::InvalidPaymentRequirements,
            "accepted does not match the offer for this resource".into(),
        ));
    }
    let payload = BatchPayload::parse(&payment.payload).map_err(wire_reject)?;
    if let BatchPayload::Deposit { deposit, .. } = &payload {
        if deposit.authorization.erc3009_authorization.is_none() {
            return Err(stateless(
                Reason::Erc3009AuthorizationRequired,
                "only ERC-3009 deposits are accepted".into(),
            ));
        }
        if deposit.amount == 0 {
            return Err(stateless(
                Reason::DepositPayload,
                "deposit amount is 0".into(),
            ));
        }
    }
    if let BatchPayload::Refund {
        amount: Some(0), ..
    } = &payload
    {
        return Err(stateless(
            Reason::RefundAmountInvalid,
            "refund amount is 0".into(),
        ));
    }
    let config = check_config(payload.channel_config(), ours)?;
    let channel_id = domain.channel_id(&config);
    if payload.voucher().channel_id != channel_id.0 {
        return Err(stateless(
            Reason::ChannelIdMismatch,
            format!(
                "voucher channelId {} is not the config's id {channel_id}",
                payload.voucher().channel_id
            ),
        ));
    }
    Ok(Checked {
        payload,
        config,
        channel_id,
    })
}

/// The channel must be one this server would have offered.
fn check_config(w: &ChannelConfigWire, ours: &EngineConfig) -> Result<ChannelConfig, Reject> {
    if w.receiver != ours.pay_to {
        return Err(stateless(
            Reason::ReceiverMismatch,
            format!("receiver {} is not payTo {}", w.receiver, ours.pay_to),
        ));
    }
    if w.token != ours.asset {
        return Err(stateless(
            Reason::TokenMismatch,
            format!("token {} is not the asset {}", w.token, ours.asset),
        ));
    }
    if w.receiver_authorizer != ours.receiver_authorizer {
        return Err(stateless(
            Reason::ReceiverAuthorizerMismatch,
            format!("receiverAuthorizer {}", w.receiver_authorizer),
        ));
    }
    if w.withdraw_delay != ours.withdraw_delay {
        return Err(stateless(
            Reason::WithdrawDelayMismatch,
            format!(
                "withdrawDelay {}, expected {}",
                w.withdraw_delay, ours.withdraw_delay
            ),
        ));
    }
    Ok(ChannelConfig {
        payer: w.payer,
        payerAuthorizer: w.payer_authorizer,
        receiver: w.receiver,
        receiverAuthorizer: w.receiver_authorizer,
        token: w.token,
        // Equal to our own delay, which `EngineConfig::validate` bounded to 30 days.
        withdrawDelay: U40::saturating_from(w.withdraw_delay),
        salt: w.salt,
    })
}

fn header_reject(e: HeaderError) -> Reject {
    stateless(Reason::InvalidPayload, e.to_string())
}

fn wire_reject(e: WireError) -> Reject {
    let reason = match &e {
        WireError::Header(_) | WireError::Network(_) => Reason::InvalidPayload,
        WireError::Version(_) => Reason::InvalidX402Version,
        WireError::Scheme(_) => Reason::InvalidScheme,
        WireError::PayloadType(_) => Reason::PayloadType,
        WireError::Payload { kind, .. } => match *kind {
            "deposit" => Reason::DepositPayload,
            "refund" => Reason::RefundPayload,
            _ => Reason::VoucherPayload,
        },
    };
    stateless(reason, e.to_string().chars().take(300).collect())
}

/// At most 64 characters of untrusted input in a message.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}
