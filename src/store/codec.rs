//! On-disk encoding of a [`ChannelRecord`] and of a claim-journal [`JournalEntry`].
//!
//! Channel record: `value = [format: u8][version: u64 big-endian][bincode 2 (serde, standard
//! config)]`.
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
//!
//! Journal entry: `value = [JOURNAL_FORMAT_V1][bincode 2 of EntryV1]`, keyed by the batch id
//! as a big-endian `u64`. Both layouts spell a channel config the same way ([`DiskConfig`]);
//! bincode writes a nested struct as its fields in order, so the bytes are those of the
//! flat layouts written before the config was shared.

use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256, hex};
use serde::{Deserialize, Serialize};

use crate::ledger::{ChannelRecord, Claimable, OnchainState, RefundMarks};
use crate::store::StoreError;
use crate::store::journal::{BatchState, JOURNAL_FORMAT_V1, JournalEntry};
use crate::typed_data::{ChannelConfig, ChannelId};

/// Format byte of the first layout (still read).
pub const FORMAT_V1: u8 = 1;
/// Format byte of the current layout (written).
pub const FORMAT_V2: u8 = 2;
const HEADER: usize = 9;

/// A [`ChannelConfig`] as plain data, in the field order of every layout.
#[derive(Serialize, Deserialize)]
struct DiskConfig {
    payer: [u8; 20],
    payer_authorizer: [u8; 20],
    receiver: [u8; 20],
    receiver_authorizer: [u8; 20],
    token: [u8; 20],
    withdraw_delay: u64,
    salt: [u8; 32],
}

impl DiskConfig {
    fn of(c: &ChannelConfig) -> Self {
        Self {
            payer: c.payer.0.0,
            payer_authorizer: c.payerAuthorizer.0.0,
            receiver: c.receiver.0.0,
            receiver_authorizer: c.receiverAuthorizer.0.0,
            token: c.token.0.0,
            withdraw_delay: c.withdrawDelay.to::<u64>(),
            salt: c.salt.0,
        }
    }

    /// The stored `withdrawDelay`, `None` when it is above uint40 (corruption).
    fn withdraw_delay(&self) -> Option<U40> {
        U40::try_from(self.withdraw_delay).ok()
    }

    fn into_config(self, withdraw_delay: U40) -> ChannelConfig {
        ChannelConfig {
            payer: Address::from(self.payer),
            payerAuthorizer: Address::from(self.payer_authorizer),
            receiver: Address::from(self.receiver),
            receiverAuthorizer: Address::from(self.receiver_authorizer),
            token: Address::from(self.token),
            withdrawDelay: withdraw_delay,
            salt: B256::from(self.salt),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DiskRecordV1 {
    channel_id: [u8; 32],
    config: DiskConfig,
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
    let base = DiskRecordV1 {
        channel_id: record.channel_id.0.0,
        config: DiskConfig::of(&record.config),
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
    let withdraw_delay = d
        .config
        .withdraw_delay()
        .ok_or_else(|| corrupt(key, "withdrawDelay above uint40", None))?;
    Ok(ChannelRecord {
        channel_id: ChannelId(B256::from(d.channel_id)),
        config: d.config.into_config(withdraw_delay),
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

#[derive(Serialize, Deserialize)]
struct RowV1 {
    channel_id: [u8; 32],
    config: DiskConfig,
    max_claimable: u128,
    signature: Vec<u8>,
    claim_total: u128,
    onchain_total_claimed: u128,
    withdraw_requested_at: u64,
}

#[derive(Serialize, Deserialize)]
struct EntryV1 {
    state: BatchState,
    rows: Vec<RowV1>,
    tx_hashes: Vec<[u8; 32]>,
    created_at: u64,
}

fn row_to_disk(r: &Claimable) -> RowV1 {
    RowV1 {
        channel_id: r.channel_id.0.0,
        config: DiskConfig::of(&r.config),
        max_claimable: r.max_claimable,
        signature: r.signature.to_vec(),
        claim_total: r.claim_total,
        onchain_total_claimed: r.onchain_total_claimed,
        withdraw_requested_at: r.withdraw_requested_at,
    }
}

fn row_from_disk(r: RowV1) -> Claimable {
    // The journal has always saturated an out-of-range delay rather than refusing the row.
    let withdraw_delay = r.config.withdraw_delay().unwrap_or(U40::MAX);
    Claimable {
        channel_id: ChannelId(B256::from(r.channel_id)),
        config: r.config.into_config(withdraw_delay),
        max_claimable: r.max_claimable,
        signature: Bytes::from(r.signature),
        claim_total: r.claim_total,
        onchain_total_claimed: r.onchain_total_claimed,
        withdraw_requested_at: r.withdraw_requested_at,
    }
}

/// Encodes a journal entry (the key is its id, big-endian).
pub(crate) fn encode_entry(entry: &JournalEntry) -> Result<Vec<u8>, StoreError> {
    let disk = EntryV1 {
        state: entry.state,
        rows: entry.rows.iter().map(row_to_disk).collect(),
        tx_hashes: entry.tx_hashes.iter().map(|h| h.0).collect(),
        created_at: entry.created_at,
    };
    let mut out = vec![JOURNAL_FORMAT_V1];
    bincode::serde::encode_into_std_write(&disk, &mut out, config()).map_err(|source| {
        StoreError::Encode {
            channel_id: entry
                .rows
                .first()
                .map(|r| r.channel_id)
                .unwrap_or(ChannelId(B256::ZERO)),
            source,
        }
    })?;
    Ok(out)
}

/// Decodes a journal entry stored under `key`.
pub(crate) fn decode_entry(key: &[u8], value: &[u8]) -> Result<JournalEntry, StoreError> {
    let corrupt = |what, source| StoreError::Corrupt {
        key: hex::encode(key),
        what,
        source,
    };
    let id = <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt("journal key is not 8 bytes", None))?;
    let (format, payload) = value
        .split_first()
        .ok_or_else(|| corrupt("empty journal entry", None))?;
    if *format != JOURNAL_FORMAT_V1 {
        return Err(corrupt("unknown journal format byte", None));
    }
    let (disk, used): (EntryV1, usize) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| corrupt("journal entry does not decode", Some(e)))?;
    if used != payload.len() {
        return Err(corrupt("trailing bytes after journal entry", None));
    }
    Ok(JournalEntry {
        id,
        state: disk.state,
        rows: disk.rows.into_iter().map(row_from_disk).collect(),
        tx_hashes: disk.tx_hashes.into_iter().map(B256::from).collect(),
        created_at: disk.created_at,
    })
}

/// A config with every field set (distinct bytes), for the store's unit tests.
#[cfg(test)]
pub(crate) fn test_config() -> ChannelConfig {
    ChannelConfig {
        payer: Address::repeat_byte(1),
        payerAuthorizer: Address::repeat_byte(2),
        receiver: Address::repeat_byte(3),
        receiverAuthorizer: Address::repeat_byte(4),
        token: Address::repeat_byte(5),
        withdrawDelay: U40::from(900u64),
        salt: B256::repeat_byte(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChannelRecord {
        let config = test_config();
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

    #[test]
    fn a_corrupt_entry_is_an_error_not_a_panic() {
        let key = 5u64.to_be_bytes();
        assert!(decode_entry(&key, &[]).is_err());
        assert!(decode_entry(&key, &[9, 1, 2]).is_err());
        assert!(decode_entry(&key, &[JOURNAL_FORMAT_V1, 0xff, 0xff]).is_err());
        assert!(decode_entry(&[1, 2], &[JOURNAL_FORMAT_V1]).is_err());
    }
}
