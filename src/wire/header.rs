//! The three x402 v2 headers carry standard base64 (with padding) of compact
//! JSON. The TypeScript SDK rejects the URL-safe alphabet, so we never emit it
//! and do not accept it either; padding is optional on input.

use base64::Engine as _;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Server → client, with status 402: base64 `PaymentRequired`.
pub const PAYMENT_REQUIRED: &str = "payment-required";
/// Client → server: base64 `PaymentPayload`.
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
/// Server → client: base64 `SettleResponse`.
pub const PAYMENT_RESPONSE: &str = "payment-response";

/// Largest `PAYMENT-SIGNATURE` we decode. A voucher payload is ~1.6 KB and a
/// deposit ~2.5 KB in base64; 16 KiB leaves room for ERC-1271 signatures and
/// extensions while bounding the work an unpaid request can cause.
pub const MAX_PAYMENT_HEADER_BYTES: usize = 16 * 1024;

const DECODER: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a payment header could not be decoded.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// The header is larger than the configured bound.
    #[error("header is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size received.
        len: usize,
        /// Configured bound.
        max: usize,
    },
    /// The header is not standard base64.
    #[error("header is not standard base64: {0}")]
    Base64(#[from] base64::DecodeError),
    /// The decoded bytes are not valid JSON of the expected shape.
    #[error("header is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes a base64 JSON header of at most `max` bytes.
pub fn decode_header<T: DeserializeOwned>(raw: &[u8], max: usize) -> Result<T, HeaderError> {
    let bytes = decode_header_bytes(raw, max)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// The bytes of a base64 header of at most `max` bytes (its JSON, not yet parsed).
pub fn decode_header_bytes(raw: &[u8], max: usize) -> Result<Vec<u8>, HeaderError> {
    if raw.len() > max {
        return Err(HeaderError::TooLarge {
            len: raw.len(),
            max,
        });
    }
    Ok(DECODER.decode(raw.trim_ascii())?)
}

/// Encodes a value as compact JSON in standard, padded base64.
pub fn encode_header<T: Serialize>(value: &T) -> String {
    // Serializing our own wire types cannot fail: they hold no maps with
    // non-string keys and no fallible custom serializers.
    // Sized for a `PAYMENT-RESPONSE` (about 400 bytes), so it is written without regrowing.
    let mut json = Vec::with_capacity(512);
    if serde_json::to_writer(&mut json, value).is_err() {
        json.clear();
    }
    base64::engine::general_purpose::STANDARD.encode(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn round_trips_compact_json() {
        let v = json!({"a": 1, "b": "x"});
        let enc = encode_header(&v);
        assert_eq!(decode_header::<Value>(enc.as_bytes(), 1024).unwrap(), v);
        assert!(!enc.contains('-') && !enc.contains('_'));
    }

    #[test]
    fn decodes_the_spec_payment_response_vector() {
        let raw = "eyJzdWNjZXNzIjp0cnVlLCJ0cmFuc2FjdGlvbiI6IjB4MTIzNDU2Nzg5MGFiY2RlZjEyMzQ1Njc4OTBhYmNkZWYxMjM0NTY3ODkwYWJjZGVmMTIzNDU2Nzg5MGFiY2RlZiIsIm5ldHdvcmsiOiJlaXAxNTU6ODQ1MzIiLCJwYXllciI6IjB4ODU3YjA2NTE5RTkxZTNBNTQ1Mzg3OTFiRGJiMEUyMjM3M2UzNmI2NiJ9";
        let v: Value = decode_header(raw.as_bytes(), 4096).unwrap();
        assert_eq!(v["network"], "eip155:84532");
        assert_eq!(v["success"], true);
    }

    #[test]
    fn rejects_oversized_url_safe_and_non_json_input() {
        assert!(matches!(
            decode_header::<Value>(&[b'A'; 100], 10),
            Err(HeaderError::TooLarge { len: 100, max: 10 })
        ));
        // "{}" in URL-safe alphabet with a character outside the standard one.
        assert!(matches!(
            decode_header::<Value>(b"e30-", 64),
            Err(HeaderError::Base64(_))
        ));
        let not_json = base64::engine::general_purpose::STANDARD.encode("not json");
        assert!(matches!(
            decode_header::<Value>(not_json.as_bytes(), 64),
            Err(HeaderError::Json(_))
        ));
    }

    #[test]
    fn accepts_missing_padding() {
        // "{}" is "e30=" padded.
        assert_eq!(decode_header::<Value>(b"e30", 64).unwrap(), json!({}));
    }
}
