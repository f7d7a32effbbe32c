//! x402 v2 wire format for the `batch-settlement` scheme on EVM.
//!
//! Plain serde types named and encoded as the specification writes them
//! (camelCase, amounts as decimal strings, CAIP-2 networks), plus the header
//! codec (standard base64 of compact JSON) and the rule that matches a
//! client's `accepted` requirements against our offer. Nothing here touches
//! state: parsing is total, and every failure is a [`WireError`] that the
//! server layer maps onto an x402 reason code.

mod encoding;
mod header;
mod matching;
mod network;
mod payload;
mod requirements;
mod response;
mod settle_header;
mod voucher_view;

pub use encoding::{decimal_u128, decimal_u256, parse_u128, parse_u256};
pub use header::{
    HeaderError, MAX_PAYMENT_HEADER_BYTES, PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE,
    decode_header, decode_header_bytes, encode_header,
};
pub use matching::{PreparedOffer, accepted_matches, json_is_subset};
pub use network::Eip155Network;
pub use payload::{
    BatchPayload, ChannelConfigWire, DepositAuthorization, DepositFields, Erc3009Authorization,
    PaymentPayload, Permit2Authorization, Permit2Permitted, Permit2Witness, RefundFields,
    VoucherFields,
};
pub use requirements::{
    BATCH_SETTLEMENT, BatchSettlementExtra, PaymentRequired, PaymentRequirements, ResourceInfo,
    X402_VERSION,
};
pub use response::{
    ChannelStateWire, PaymentResponseExtra, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse, VoucherStateWire,
};
pub use settle_header::settle_header;
pub use voucher_view::{AcceptedView, ExtraValue, MAX_BRACKETS, VoucherView};

use thiserror::Error;

/// Why a payment message could not be understood.
#[derive(Debug, Error)]
pub enum WireError {
    /// The header could not be decoded (size, base64, UTF-8 or JSON).
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// `x402Version` is not 2.
    #[error("x402Version {0} is not supported (expected 2)")]
    Version(u64),
    /// The scheme is not `batch-settlement`.
    #[error("scheme {0:?} is not batch-settlement")]
    Scheme(String),
    /// The network is not a CAIP-2 `eip155:<chainId>` string.
    #[error("network {0:?} is not an eip155 CAIP-2 id")]
    Network(String),
    /// `payload.type` is missing or not one of deposit, voucher, refund.
    #[error("payload type {0:?} is not deposit, voucher or refund")]
    PayloadType(String),
    /// The scheme payload has the right type but a malformed body.
    #[error("malformed {kind} payload: {source}")]
    Payload {
        /// Which payload kind failed to parse.
        kind: &'static str,
        /// The JSON error with its path.
        #[source]
        source: serde_json::Error,
    },
}
