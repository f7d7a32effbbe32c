//! `PAYMENT-SIGNATURE` → a checked batch-settlement payload, or the reason it is refused.
//!
//! The order of checks follows the cost of each: size and base64 first, JSON, version,
//! `accepted` against our offer, payload shape, channel config against the offer, and the
//! channel id (four keccak rounds, skipped when the ledger already holds that id with that
//! exact config). Signatures and ledger rules come after, in the engine.

use alloy::primitives::aliases::U40;
use serde_json::Value;

use crate::engine::EngineConfig;
use crate::ledger::{Ledger, Reject};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::wire::{
    BATCH_SETTLEMENT, BatchPayload, ChannelConfigWire, HeaderError, MAX_PAYMENT_HEADER_BYTES,
    PaymentPayload, PaymentRequirements, PreparedOffer, VoucherView, WireError, X402_VERSION,
    accepted_matches, decode_header, decode_header_bytes,
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

/// Decodes and checks a `PAYMENT-SIGNATURE` value against `offer`. With a `ledger`, a
/// channel it holds with exactly the payload's config is not hashed again: its id was
/// computed from that config when the channel was first seen (a deposit, the chain, or our
/// own store's record), so the claimed id is that config's id.
pub(crate) fn decode(
    raw: &[u8],
    offer: &PreparedOffer,
    ours: &EngineConfig,
    domain: &EscrowDomain,
    ledger: Option<&Ledger>,
) -> Result<Checked, Reject> {
    let payload = match voucher_in_one_pass(raw, offer) {
        Some(payload) => payload,
        None => decode_general(raw, offer.requirements())?,
    };
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
    let claimed = ChannelId(payload.voucher().channel_id);
    let channel_id = match ledger {
        Some(ledger) if ledger.holds_config(&claimed, &config) => claimed,
        _ => domain.channel_id(&config),
    };
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

/// The common case, a voucher whose `accepted` matches the offer, read in one pass with no
/// JSON tree and no string built ([`VoucherView`]). `None` for anything else, which
/// [`decode_general`] then reads (it gives every refusal, with its message).
fn voucher_in_one_pass(raw: &[u8], offer: &PreparedOffer) -> Option<BatchPayload> {
    let json = decode_header_bytes(raw, MAX_PAYMENT_HEADER_BYTES).ok()?;
    let view = VoucherView::parse(&json)?;
    (view.accepted.scheme == BATCH_SETTLEMENT && offer.matches_view(&view.accepted)).then_some(
        BatchPayload::Voucher {
            channel_config: view.channel_config,
            voucher: view.voucher,
        },
    )
}

/// Every payload kind, through a JSON tree: version, `PaymentPayload`, `accepted` against
/// the offer, the payload's shape.
fn decode_general(raw: &[u8], offer: &PaymentRequirements) -> Result<BatchPayload, Reject> {
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
    BatchPayload::parse(&payment.payload).map_err(wire_reject)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::offer::requirements;
    use crate::wire::{Eip155Network, encode_header};
    use alloy_primitives::{Address, B256};
    use base64::Engine as _;
    use serde_json::json;

    fn ours() -> EngineConfig {
        EngineConfig {
            network: Eip155Network(31337),
            pay_to: Address::repeat_byte(0xa0),
            asset: Address::repeat_byte(0xc0),
            asset_name: "USDC".into(),
            asset_version: "2".into(),
            receiver_authorizer: Address::repeat_byte(0xb0),
            withdraw_delay: 900,
            max_timeout_seconds: 300,
            extra: serde_json::from_value(
                json!({"minDeposit": "10000", "tiers": [1, {"a": null}]}),
            )
            .unwrap(),
        }
    }

    /// A well-formed voucher payment for our offer at price 1000, as JSON text.
    fn good(c: &EngineConfig, domain: &EscrowDomain) -> String {
        let config = ChannelConfigWire {
            payer: Address::repeat_byte(0x11),
            payer_authorizer: Address::repeat_byte(0x11),
            receiver: c.pay_to,
            receiver_authorizer: c.receiver_authorizer,
            token: c.asset,
            withdraw_delay: c.withdraw_delay,
            salt: B256::repeat_byte(0x22),
        };
        let id = domain.channel_id(&check_config(&config, c).unwrap());
        // Written out so that the key order is the one the cases below edit.
        format!(
            concat!(
                r#"{{"x402Version":2,"resource":{{"url":"http://localhost/paid","description":"d"}},"#,
                r#""accepted":{},"payload":{{"type":"voucher","channelConfig":{},"#,
                r#""voucher":{{"channelId":"{}","maxClaimableAmount":"1000","signature":"0x{}"}}}}}}"#
            ),
            serde_json::to_string(&requirements(c, 1000)).unwrap(),
            serde_json::to_string(&config).unwrap(),
            id,
            "1b".repeat(65)
        )
    }

    fn b64(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(text)
            .into_bytes()
    }

    /// One-pass and general decoder on the same header: whenever the one-pass decoder
    /// answers, the general one accepts the same payload.
    fn agree(offer: &PreparedOffer, text: &str) -> bool {
        let raw = b64(text);
        let fast = voucher_in_one_pass(&raw, offer);
        let general = decode_general(&raw, offer.requirements());
        if let Some(payload) = &fast {
            assert_eq!(
                general.as_ref().ok(),
                Some(payload),
                "one-pass accepted what the general decoder did not: {text}"
            );
        }
        fast.is_some()
    }

    #[test]
    fn the_one_pass_decoder_answers_only_what_the_general_one_answers_the_same() {
        let c = ours();
        let domain = EscrowDomain::new(31337, Address::repeat_byte(0xee));
        let offer = PreparedOffer::new(requirements(&c, 1000));
        let base = good(&c, &domain);
        let checksummed = |a: Address| a.to_checksum(None);
        let pay_to = checksummed(c.pay_to);
        let authorizer = checksummed(c.receiver_authorizer);
        let r = |from: &str, to: &str| {
            assert!(base.contains(from), "{from} not in {base}");
            base.replacen(from, to, 1)
        };
        let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
        let nested = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        // (case, JSON text, the one-pass decoder should answer)
        let cases: Vec<(&str, String, bool)> = vec![
            ("as sent", base.clone(), true),
            ("lowercase payTo", r(&pay_to, &pay_to.to_lowercase()), true),
            (
                "lowercase receiverAuthorizer in extra",
                r(
                    &format!("\"receiverAuthorizer\":\"{authorizer}\""),
                    &format!("\"receiverAuthorizer\":\"{}\"", authorizer.to_lowercase()),
                ),
                true,
            ),
            (
                "key added to extra",
                r(
                    "\"extra\":{",
                    "\"extra\":{\"note\":{\"x\":[1,2.5,true,null]},",
                ),
                true,
            ),
            (
                "unknown top-level key",
                r("{\"x402Version\"", "{\"z\":[{}],\"x402Version\""),
                true,
            ),
            (
                "resource null",
                r(
                    "\"resource\":{\"url\":\"http://localhost/paid\",\"description\":\"d\"}",
                    "\"resource\":null",
                ),
                true,
            ),
            (
                "extensions object",
                r(
                    "{\"x402Version\"",
                    "{\"extensions\":{\"a\":[1]},\"x402Version\"",
                ),
                true,
            ),
            (
                "extra key twice, last ours",
                r("\"extra\":{", "\"extra\":{\"withdrawDelay\":901,"),
                true,
            ),
            (
                "extra key twice, last not ours",
                r(
                    "\"withdrawDelay\":900",
                    "\"withdrawDelay\":900,\"withdrawDelay\":901",
                ),
                false,
            ),
            (
                "amount with a leading zero",
                r("\"amount\":\"1000\"", "\"amount\":\"01000\""),
                true,
            ),
            (
                "x402Version twice",
                r("{\"x402Version\":2", "{\"x402Version\":2,\"x402Version\":2"),
                false,
            ),
            (
                "x402Version 2.0",
                r("\"x402Version\":2", "\"x402Version\":2.0"),
                false,
            ),
            (
                "x402Version 1",
                r("\"x402Version\":2", "\"x402Version\":1"),
                false,
            ),
            ("top level array", format!("[{base}]"), false),
            (
                "payload an array",
                r(
                    "\"payload\":{\"type\":\"voucher\",",
                    "\"payload\":[\"voucher\",",
                ),
                false,
            ),
            (
                "payload type refund",
                r("\"type\":\"voucher\"", "\"type\":\"refund\""),
                false,
            ),
            (
                "payload type missing",
                r("\"type\":\"voucher\",", ""),
                false,
            ),
            (
                "nesting past the limit",
                r(
                    "{\"x402Version\"",
                    &format!("{{\"z\":{deep},\"x402Version\""),
                ),
                false,
            ),
            (
                "nesting within the limit, many brackets",
                r(
                    "{\"x402Version\"",
                    &format!("{{\"z\":{nested},\"x402Version\""),
                ),
                false,
            ),
            (
                "raw value token",
                r(
                    "\"channelConfig\":{",
                    "\"channelConfig\":{\"$serde_json::private::RawValue\":\"1\",",
                ),
                false,
            ),
            (
                "escaped scheme",
                r(
                    "\"scheme\":\"batch-settlement\"",
                    "\"scheme\":\"batch\\u002dsettlement\"",
                ),
                false,
            ),
            (
                "scheme exact",
                r("\"scheme\":\"batch-settlement\"", "\"scheme\":\"exact\""),
                false,
            ),
            (
                "network other",
                r("\"network\":\"eip155:31337\"", "\"network\":\"eip155:1\""),
                false,
            ),
            ("extra dropped", r("\"withdrawDelay\":900,", ""), false),
            (
                "extra withdrawDelay as a string",
                r("\"withdrawDelay\":900", "\"withdrawDelay\":\"900\""),
                false,
            ),
            (
                "extra withdrawDelay as a float",
                r("\"withdrawDelay\":900", "\"withdrawDelay\":900.0"),
                false,
            ),
            (
                "extra array changed",
                r("\"tiers\":[1,{\"a\":null}]", "\"tiers\":[1,{\"a\":0}]"),
                false,
            ),
            (
                "extra object grew",
                r(
                    "\"tiers\":[1,{\"a\":null}]",
                    "\"tiers\":[1,{\"a\":null,\"b\":1}]",
                ),
                false,
            ),
            (
                "extra null",
                r("\"extra\":{", "\"extra\":null,\"x\":{"),
                false,
            ),
            (
                "maxTimeoutSeconds float",
                r("\"maxTimeoutSeconds\":300", "\"maxTimeoutSeconds\":300.0"),
                false,
            ),
            (
                "resource url a number",
                r("\"url\":\"http://localhost/paid\"", "\"url\":5"),
                false,
            ),
            (
                "extensions an array",
                r("{\"x402Version\"", "{\"extensions\":[1],\"x402Version\""),
                false,
            ),
            (
                "voucher signature missing",
                r(",\"signature\":\"0x", ",\"sig\":\"0x"),
                false,
            ),
            (
                "amount negative",
                r(
                    "\"maxClaimableAmount\":\"1000\"",
                    "\"maxClaimableAmount\":\"-1\"",
                ),
                false,
            ),
            ("not JSON", base[..200].to_owned(), false),
        ];
        for (case, text, answers) in &cases {
            assert_eq!(agree(&offer, text), *answers, "{case}");
        }
    }

    /// The ledger shortcut: a held channel with the payload's exact config is not hashed
    /// again, and any other config for that id is still hashed and refused.
    #[test]
    fn a_known_channel_skips_the_hash_only_for_its_own_config() {
        use crate::ledger::{ChannelRecord, OnchainState};
        let c = ours();
        let domain = EscrowDomain::new(31337, Address::repeat_byte(0xee));
        let offer = PreparedOffer::new(requirements(&c, 1000));
        let base = good(&c, &domain);
        let fresh = decode(&b64(&base), &offer, &c, &domain, None).unwrap();
        let ledger = Ledger::new(domain.clone());
        ledger.restore([ChannelRecord::from_chain(
            fresh.channel_id,
            fresh.config.clone(),
            OnchainState::default(),
            0,
        )]);
        assert!(ledger.holds_config(&fresh.channel_id, &fresh.config));
        let known = decode(&b64(&base), &offer, &c, &domain, Some(&ledger)).unwrap();
        assert_eq!(
            (known.channel_id, &known.config),
            (fresh.channel_id, &fresh.config)
        );
        // Another salt under the same claimed id: not the held config, so hashed and refused.
        let salt = format!("{}", B256::repeat_byte(0x22));
        let other = base.replacen(&salt, &format!("{}", B256::repeat_byte(0x33)), 1);
        assert_ne!(other, base);
        let refused = decode(&b64(&other), &offer, &c, &domain, Some(&ledger)).unwrap_err();
        assert_eq!(refused.reason, Reason::ChannelIdMismatch);
        assert_eq!(
            refused.reason,
            decode(&b64(&other), &offer, &c, &domain, None)
                .unwrap_err()
                .reason
        );
    }

    #[test]
    fn every_refusal_is_the_general_decoders() {
        let c = ours();
        let domain = EscrowDomain::new(31337, Address::repeat_byte(0xee));
        let offer = PreparedOffer::new(requirements(&c, 1000));
        let base = good(&c, &domain);
        let checked = decode(&b64(&base), &offer, &c, &domain, None).unwrap();
        assert!(matches!(checked.payload, BatchPayload::Voucher { .. }));
        for text in [
            base.replacen("\"x402Version\":2", "\"x402Version\":1", 1),
            base.replacen("\"scheme\":\"batch-settlement\"", "\"scheme\":\"exact\"", 1),
            base.replacen(
                "\"maxClaimableAmount\":\"1000\"",
                "\"maxClaimableAmount\":\"x\"",
                1,
            ),
            "[1,2]".to_owned(),
        ] {
            let raw = b64(&text);
            let ours = decode(&raw, &offer, &c, &domain, None).unwrap_err();
            let general = decode_general(&raw, offer.requirements()).unwrap_err();
            assert_eq!(
                (ours.reason, ours.message()),
                (general.reason, general.message())
            );
        }
        // Over the size bound: the general decoder's message, whatever the content.
        let huge = encode_header(&json!({"x": "y".repeat(MAX_PAYMENT_HEADER_BYTES)}));
        let refused = decode(huge.as_bytes(), &offer, &c, &domain, None).unwrap_err();
        assert_eq!(refused.reason, Reason::InvalidPayload);
        assert!(
            refused.message().contains("more than the"),
            "{}",
            refused.message()
        );
    }
}
