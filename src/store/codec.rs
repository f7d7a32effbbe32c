//! On-disk encoding of a [`ChannelRecord`].
//!
//! `value = [format: u8][version: u64 big-endian][bincode 2 (serde, standard config)]`.
//! The record version sits in a fixed header so compare-and-set reads it without decoding.
//! The payload is a private plain-data struct, not the alloy types, so that the format does
//! not change if alloy's serde representation does. A new layout gets a new format byte.
//!
//! | format | layout |
//! |---|---|
//! | 1 | the spec's per-channel fields |
//! | 2 | format 1 plus the refund marks ([`crate::ledger::RefundMarks`]) |
//!
//! Records are written in the newest format; older ones are still read (a format-1 record
//! has no refund marks: nothing was remembered of refunds before format 2).

use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256, hex};
use serde::{Deserialize, Serialize};

use crate::ledger::{ChannelRecord, OnchainState, RefundMarks};
use crate::store::StoreError;
use crate::typed_data::{ChannelConfig, ChannelId};

/// Format byte of the first layout (still read).
pub const FORMAT_V1: u8 = 1;
/// Format byte of the current layout (written).
pub const FORMAT_V2: u8 = 2;
const HEADER: usize = 9;

#[derive(Serialize, Deserialize)]
struct DiskRecordV1 {
    channel_id: [u8; 32],
    payer: [u8; 20],
    payer_authorizer: [u8; 20],
    receiver: [u8; 20],
    receiver_authorizer: [u8; 20],
    token: [u8; 20],
    withdraw_delay: u64,
    salt: [u8; 32],
    charged: u128,
    signed_max_claimable: u128,
    signature: Vec<u8>,
    balance: u128,
    total_claimed: u128,
    withdraw_requested_at: u64,
    refund_nonce: [u8; 32],
    onchain_synced_at: u64,
    last_request_at: u64,
}

/// Format 2: format 1's fields, then the refund marks.
#[derive(Serialize, Deserialize)]
struct DiskRecordV2 {
    base: DiskRecordV1,
    refunded_at: Option<u128>,
    refund_window_start: u64,
    refund_window_count: u32,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `record` with its version in the header.
pub(crate) fn encode(record: &ChannelRecord) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let c = &record.config;
    let base = DiskRecordV1 {
        channel_id: record.channel_id.0.0,
        payer: c.payer.0.0,
        payer_authorizer: c.payerAuthorizer.0.0,
        receiver: c.receiver.0.0,
        receiver_authorizer: c.receiverAuthorizer.0.0,
        token: c.token.0.0,
        withdraw_delay: c.withdrawDelay.to::<u64>(),
        salt: c.salt.0,
        charged: record.charged,
        signed_max_claimable: record.signed_max_claimable,
        signature: record.signature.to_vec(),
        balance: record.onchain.balance,
        total_claimed: record.onchain.total_claimed,
        withdraw_requested_at: record.onchain.withdraw_requested_at,
        refund_nonce: record.onchain.refund_nonce.to_be_bytes(),
        onchain_synced_at: record.onchain_synced_at,
        last_request_at: record.last_request_at,
    };
    let disk = DiskRecordV2 {
        base,
        refunded_at: record.refunds.refunded_at,
        refund_window_start: record.refunds.window_start,
        refund_window_count: record.refunds.window_count,
    };
    let mut out = Vec::with_capacity(HEADER + 256);
    out.push(FORMAT_V2);
    out.extend_from_slice(&record.version.to_be_bytes());
    bincode::serde::encode_into_std_write(&disk, &mut out, config())?;
    Ok(out)
}

/// The record version stored in `value`'s header.
pub(crate) fn version_of(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    match value {
        [FORMAT_V1 | FORMAT_V2, rest @ ..] => {
            let word: [u8; 8] = rest
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt(key, "value shorter than its header", None))?;
            Ok(u64::from_be_bytes(word))
        }
        [] => Err(corrupt(key, "empty value", None)),
        _ => Err(corrupt(key, "unknown format byte", None)),
    }
}

/// Decodes a stored value and checks it belongs to `key`.
pub(crate) fn decode(key: &[u8], value: &[u8]) -> Result<ChannelRecord, StoreError> {
    let version = version_of(key, value)?;
    let payload = value.get(HEADER..).unwrap_or_default();
    let (d, refunds) = match value.first() {
        Some(&FORMAT_V1) => (
            payload_of::<DiskRecordV1>(key, payload)?,
            RefundMarks::default(),
        ),
        _ => {
            let v2: DiskRecordV2 = payload_of(key, payload)?;
            let marks = RefundMarks {
                refunded_at: v2.refunded_at,
                window_start: v2.refund_window_start,
                window_count: v2.refund_window_count,
            };
            (v2.base, marks)
        }
    };
    if key != d.channel_id.as_slice() {
        return Err(corrupt(key, "record belongs to another channel", None));
    }
    let withdraw_delay = U40::try_from(d.withdraw_delay)
        .map_err(|_| corrupt(key, "withdrawDelay above uint40", None))?;
    let config = ChannelConfig {
        payer: Address::from(d.payer),
        payerAuthorizer: Address::from(d.payer_authorizer),
        receiver: Address::from(d.receiver),
        receiverAuthorizer: Address::from(d.receiver_authorizer),
        token: Address::from(d.token),
        withdrawDelay: withdraw_delay,
        salt: B256::from(d.salt),
    };
    Ok(ChannelRecord {
        channel_id: ChannelId(B256::from(d.channel_id)),
        config,
        charged: d.charged,
        signed_max_claimable: d.signed_max_claimable,
        signature: Bytes::from(d.signature),
        onchain: OnchainState {
            balance: d.balance,
            total_claimed: d.total_claimed,
            withdraw_requested_at: d.withdraw_requested_at,
            refund_nonce: U256::from_be_bytes(d.refund_nonce),
        },
        onchain_synced_at: d.onchain_synced_at,
        last_request_at: d.last_request_at,
        version,
        refunds,
    })
}

/// Decodes a whole payload (trailing bytes are corruption, not a newer format).
fn payload_of<T: serde::de::DeserializeOwned>(key: &[u8], payload: &[u8]) -> Result<T, StoreError> {
    let (d, used): (T, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| corrupt(key, "payload does not decode", Some(e)))?;
    if used != payload.len() {
        return Err(corrupt(key, "trailing bytes after the payload", None));
    }
    Ok(d)
}

fn corrupt(
    key: &[u8],
    what: &'static str,
    source: Option<bincode::error::DecodeError>,
) -> StoreError {
    StoreError::Corrupt {
        key: hex::encode_prefixed(key),
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChannelRecord {
        let config = ChannelConfig {
            payer: Address::repeat_byte(1),
            payerAuthorizer: Address::repeat_byte(2),
            receiver: Address::repeat_byte(3),
            receiverAuthorizer: Address::repeat_byte(4),
            token: Address::repeat_byte(5),
            withdrawDelay: U40::from(900u64),
            salt: B256::repeat_byte(6),
        };
        ChannelRecord {
            channel_id: ChannelId(B256::repeat_byte(7)),
            config,
            charged: u128::MAX - 1,
            signed_max_claimable: u128::MAX,
            signature: Bytes::from(vec![0xab; 65]),
            onchain: OnchainState {
                balance: 10,
                total_claimed: 3,
                withdraw_requested_at: 1_700_000_000,
                refund_nonce: U256::MAX,
            },
            onchain_synced_at: 11,
            last_request_at: 12,
            version: 42,
            refunds: RefundMarks {
                refunded_at: Some(5),
                window_start: 13,
                window_count: 2,
            },
        }
    }

    #[test]
    fn a_record_round_trips_exactly() {
        let r = sample();
        let bytes = encode(&r).expect("encode");
        assert_eq!(bytes[0], FORMAT_V2);
        assert_eq!(version_of(r.channel_id.0.as_slice(), &bytes).ok(), Some(42));
        assert_eq!(decode(r.channel_id.0.as_slice(), &bytes).ok(), Some(r));
    }

    /// A record written by the previous version (format 1) still loads, with no refund
    /// marks, and keeps its version for compare-and-set.
    #[test]
    fn a_format_1_record_still_decodes_without_refund_marks() {
        let r = sample();
        let v2 = encode(&r).expect("encode");
        let payload: DiskRecordV2 = bincode::serde::decode_from_slice(&v2[HEADER..], config())
            .expect("v2")
            .0;
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&r.version.to_be_bytes());
        bincode::serde::encode_into_std_write(&payload.base, &mut v1, config()).expect("v1");
        let key = r.channel_id.0;
        assert_eq!(version_of(key.as_slice(), &v1).ok(), Some(42));
        let old = decode(key.as_slice(), &v1).expect("format 1 decodes");
        assert_eq!(old.refunds, RefundMarks::default());
        assert_eq!(
            ChannelRecord {
                refunds: r.refunds,
                ..old
            },
            r
        );
        let mut trailing = v1;
        trailing.push(0);
        assert!(decode(key.as_slice(), &trailing).is_err());
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        let r = sample();
        let key = r.channel_id.0;
        let good = encode(&r).expect("encode");
        let mut cases: Vec<Vec<u8>> =
            vec![vec![], vec![FORMAT_V1], vec![9; 40], good[..20].to_vec()];
        let mut trailing = good.clone();
        trailing.push(0);
        cases.push(trailing);
        for bad in cases {
            assert!(matches!(
                decode(key.as_slice(), &bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let other_key = B256::repeat_byte(8);
        assert!(decode(other_key.as_slice(), &good).is_err());
    }
}
