//! A refused payment as data: the HTTP status, the reason code and what the 402 carries.

use std::fmt;

use http::StatusCode;

use crate::reason::Reason;
use crate::wire::{PaymentRequired, SettleResponse};

/// The engine said no. Nothing was charged and no channel state changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// 402 for anything the client can fix by paying (again); 500 for our own failures.
    pub status: StatusCode,
    /// The x402 reason code, `None` only for a plain "payment required" (no header sent).
    pub reason: Option<Reason>,
    /// Human-readable detail (never echoes more than a bounded slice of the input).
    pub message: String,
    /// The offer to send in `PAYMENT-REQUIRED` (402 only).
    pub required: Option<PaymentRequired>,
    /// A failed `PAYMENT-RESPONSE` (500 after the handler ran: charge refused or store down).
    pub response: Option<SettleResponse>,
}

impl Refusal {
    /// The reason string on the wire, or `"payment_required"` when no payment was sent.
    pub fn code(&self) -> &'static str {
        self.reason.map_or("payment_required", Reason::as_str)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code(),
            self.message
        )
    }
}

impl std::error::Error for Refusal {}
