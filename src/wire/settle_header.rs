//! `PAYMENT-RESPONSE` of a paid request, written straight into header bytes.
//!
//! Every paid request answers with one; through `serde_json` it costs a serializer walk, a
//! temporary buffer and a second copy for base64. The shape of a voucher or deposit answer is
//! fixed (decimal strings, a hex id, our own network and payer strings), so it is written
//! field by field into a reused buffer, in the order the derived `Serialize` writes them: the
//! bytes are the same (pinned by the tests). Anything else (a failure, extensions, pass-through
//! fields, a string that would need escaping) goes through [`encode_header`].

use std::cell::RefCell;
use std::io::Write;

use base64::Engine as _;

use super::{ChannelStateWire, PaymentResponseExtra, SettleResponse, encode_header};

thread_local! {
    /// JSON of the answer being written; kept per thread so no request allocates one.
    static JSON: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// The base64 `PAYMENT-RESPONSE` value of `response`, as [`encode_header`] would write it.
pub fn settle_header(response: &SettleResponse) -> String {
    let Some(extra) = plain_extra(response) else {
        return encode_header(response);
    };
    JSON.with_borrow_mut(|json| {
        json.clear();
        write_plain(json, response, extra);
        base64::engine::general_purpose::STANDARD.encode(json.as_slice())
    })
}

/// The `extra` of an answer the fast path writes, if it is one.
fn plain_extra(r: &SettleResponse) -> Option<&PaymentResponseExtra> {
    let extra = r.extra.as_ref()?;
    let plain = r.success
        && r.error_reason.is_none()
        && r.error_message.is_none()
        && r.extensions.is_none()
        && extra.voucher_state.is_none()
        && extra.other.is_empty()
        && [
            r.payer.as_deref(),
            Some(&r.transaction),
            Some(&r.network),
            r.amount.as_deref(),
        ]
        .into_iter()
        .flatten()
        .all(needs_no_escape);
    plain.then_some(extra)
}

/// Printable ASCII other than `"` and `\`: written verbatim by `serde_json`.
fn needs_no_escape(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

fn write_plain(json: &mut Vec<u8>, r: &SettleResponse, extra: &PaymentResponseExtra) {
    json.extend_from_slice(b"{\"success\":true");
    if let Some(payer) = &r.payer {
        string_field(json, "payer", payer);
    }
    string_field(json, "transaction", &r.transaction);
    string_field(json, "network", &r.network);
    if let Some(amount) = &r.amount {
        string_field(json, "amount", amount);
    }
    json.extend_from_slice(b",\"extra\":{");
    let mut first = true;
    if let Some(charged) = extra.charged_amount {
        decimal_field(json, &mut first, "chargedAmount", charged);
    }
    if let Some(state) = &extra.channel_state {
        if !first {
            json.push(b',');
        }
        json.extend_from_slice(b"\"channelState\":");
        write_state(json, state);
    }
    json.extend_from_slice(b"}}");
}

fn write_state(json: &mut Vec<u8>, s: &ChannelStateWire) {
    json.extend_from_slice(b"{\"channelId\":\"0x");
    let mut hex = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    if alloy_primitives::hex::encode_to_slice(s.channel_id, &mut hex).is_ok() {
        json.extend_from_slice(&hex);
    }
    json.push(b'"');
    let mut first = false;
    decimal_field(json, &mut first, "balance", s.balance);
    decimal_field(json, &mut first, "totalClaimed", s.total_claimed);
    // Writing into a Vec cannot fail.
    let _ = write!(json, ",\"withdrawRequestedAt\":{}", s.withdraw_requested_at);
    let _ = write!(json, ",\"refundNonce\":\"{}\"", s.refund_nonce);
    if let Some(charged) = s.charged_cumulative_amount {
        decimal_field(json, &mut first, "chargedCumulativeAmount", charged);
    }
    json.push(b'}');
}

fn string_field(json: &mut Vec<u8>, name: &str, value: &str) {
    json.extend_from_slice(b",\"");
    json.extend_from_slice(name.as_bytes());
    json.extend_from_slice(b"\":\"");
    json.extend_from_slice(value.as_bytes());
    json.push(b'"');
}

fn decimal_field(json: &mut Vec<u8>, first: &mut bool, name: &str, value: u128) {
    if !std::mem::take(first) {
        json.push(b',');
    }
    let _ = write!(json, "\"{name}\":\"{value}\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{B256, Bytes, U256};
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use crate::wire::VoucherStateWire;

    fn paid(charged: u128, balance: u128, nonce: u64, deposit: bool) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: Some("0x857B06519E91e3A54538791bDbb0E22373e36b66".into()),
            transaction: if deposit {
                format!("0x{}", "ab".repeat(32))
            } else {
                String::new()
            },
            network: "eip155:8453".into(),
            amount: Some(if deposit {
                "5000".into()
            } else {
                String::new()
            }),
            extra: Some(PaymentResponseExtra {
                charged_amount: Some(charged),
                channel_state: Some(ChannelStateWire {
                    channel_id: B256::repeat_byte(0x3c),
                    balance,
                    total_claimed: balance / 3,
                    withdraw_requested_at: nonce.wrapping_mul(1_000),
                    refund_nonce: U256::from(nonce),
                    charged_cumulative_amount: Some(charged * 7),
                }),
                voucher_state: None,
                other: Map::new(),
            }),
            extensions: None,
        }
    }

    #[test]
    fn a_paid_answer_is_written_byte_for_byte_as_serde_would() {
        for deposit in [false, true] {
            let r = paid(700, 100_000, 1, deposit);
            assert_eq!(settle_header(&r), encode_header(&r));
        }
        let mut r = paid(0, 0, 0, false);
        let extra = r.extra.as_mut().expect("extra");
        extra.charged_amount = None;
        extra
            .channel_state
            .as_mut()
            .expect("state")
            .charged_cumulative_amount = None;
        r.payer = None;
        r.amount = None;
        assert_eq!(settle_header(&r), encode_header(&r));
        r.extra.as_mut().expect("extra").channel_state = None;
        assert_eq!(settle_header(&r), encode_header(&r));
    }

    #[test]
    fn anything_else_goes_through_serde() {
        let base = paid(1, 2, 3, false);
        let mut cases = Vec::new();
        let mut r = base.clone();
        r.success = false;
        r.error_reason = Some("invalid_batch_settlement_evm_signature".into());
        cases.push(r);
        let mut r = base.clone();
        r.extensions = Some(Map::from_iter([("x".to_string(), json!(1))]));
        cases.push(r);
        let mut r = base.clone();
        let extra = r.extra.as_mut().expect("extra");
        extra
            .other
            .insert("note".into(), Value::String("hi".into()));
        extra.voucher_state = Some(VoucherStateWire {
            signed_max_claimable: Some(9),
            signature: Some(Bytes::from(vec![1, 2])),
        });
        cases.push(r);
        let mut r = base.clone();
        r.network = "eip155:\"1\\\u{7}é".into();
        cases.push(r);
        let mut r = base;
        r.extra = None;
        cases.push(r);
        for r in cases {
            assert_eq!(settle_header(&r), encode_header(&r), "{r:?}");
        }
    }

    proptest! {
        #[test]
        fn any_paid_answer_matches_serde(
            charged in any::<u128>(),
            balance in any::<u128>(),
            nonce in any::<u64>(),
            deposit in any::<bool>(),
            id in any::<[u8; 32]>(),
        ) {
            let mut r = paid(charged / 8, balance, nonce, deposit);
            if let Some(state) = r.extra.as_mut().and_then(|e| e.channel_state.as_mut()) {
                state.channel_id = B256::from(id);
                state.refund_nonce = U256::from(nonce) << 130;
            }
            prop_assert_eq!(settle_header(&r), encode_header(&r));
        }
    }
}
