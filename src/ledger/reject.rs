//! Rejections as data: a [`Reason`] plus the context the caller needs to answer.
//!
//! A rejection is not an error of the server: it is the protocol saying "no" to an input.
//! It never allocates except for the corrective-402 case, which carries the last voucher's
//! signature (a reference-counted `Bytes`, so cloning is a counter bump).

use std::fmt;

use crate::ledger::channel::{ChannelSnapshot, LastVoucher};
use crate::reason::Reason;
use crate::typed_data::ChannelId;
use crate::verify::SignatureFault;

/// Why a voucher, reservation or ledger operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    /// The x402 reason code to put on the wire.
    pub reason: Reason,
    /// Channel concerned, when known.
    pub channel_id: Option<ChannelId>,
    /// What exactly failed.
    pub detail: Detail,
}

/// The context of a [`Reject`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Nothing beyond the reason.
    None,
    /// The voucher's ceiling is not `charged + price`: what a corrective 402 needs. Boxed
    /// to keep `Reject` small on the common paths; this one allocates.
    CumulativeMismatch(Box<Mismatch>),
    /// `maxClaimableAmount` is above the mirrored balance.
    ExceedsBalance {
        /// The signed ceiling.
        max_claimable: u128,
        /// Mirrored on-chain balance.
        balance: u128,
    },
    /// A timed withdrawal is pending on chain: service stops until it is cleared.
    WithdrawalPending {
        /// On-chain `withdrawRequestedAt`.
        requested_at: u64,
    },
    /// `maxClaimableAmount` is not above (or, for refunds, is below) on-chain `totalClaimed`.
    BelowClaimed {
        /// The signed ceiling.
        max_claimable: u128,
        /// Mirrored on-chain `totalClaimed`.
        total_claimed: u128,
    },
    /// The handler tried to charge more than it reserved.
    ChargeExceedsPrice {
        /// The charge asked for.
        actual: u128,
        /// The reserved per-request maximum.
        price: u128,
    },
    /// The signature is unusable or does not recover to the channel's signer.
    Signature(SignatureFault),
    /// The channel's payer authorizer is zero: the voucher must go through ERC-1271.
    Erc1271Required,
    /// A message for the client that says more than the reason (a chain failure, a server
    /// limit, a malformed field); [`Reject::message`] answers it as is.
    Message(String),
    /// The server cannot check the payment right now (its channel store is down): answered
    /// with 503, nothing served, nothing changed; retry later.
    Unavailable(String),
}

/// Context of a `cumulative_amount_mismatch`: `extra.channelState` and `extra.voucherState`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// `chargedCumulativeAmount + price`, the only ceiling accepted.
    pub expected: u128,
    /// The ceiling the client signed.
    pub got: u128,
    /// Server channel state (`channelState`).
    pub state: ChannelSnapshot,
    /// Latest accepted voucher (`voucherState`), if any.
    pub last_voucher: Option<LastVoucher>,
}

impl Reject {
    /// A rejection with no extra context.
    pub const fn new(reason: Reason, channel_id: Option<ChannelId>) -> Self {
        Self {
            reason,
            channel_id,
            detail: Detail::None,
        }
    }

    /// A rejection with context.
    pub const fn with(reason: Reason, channel_id: Option<ChannelId>, detail: Detail) -> Self {
        Self {
            reason,
            channel_id,
            detail,
        }
    }

    pub(crate) fn busy(id: ChannelId) -> Self {
        Self::new(Reason::ChannelBusy, Some(id))
    }

    pub(crate) fn missing(id: ChannelId) -> Self {
        Self::new(Reason::MissingChannel, Some(id))
    }

    /// The channel store is unavailable (`unexpected_verify_error`, answered with 503).
    pub fn unavailable(id: Option<ChannelId>) -> Self {
        Self::with(
            Reason::UnexpectedVerifyError,
            id,
            Detail::Unavailable(
                "the channel store is unavailable; nothing was charged, retry shortly".into(),
            ),
        )
    }

    /// A rejection whose message for the client is `message` (see [`Reject::message`]).
    pub fn explained(
        reason: Reason,
        channel_id: Option<ChannelId>,
        message: impl Into<String>,
    ) -> Self {
        Self::with(reason, channel_id, Detail::Message(message.into()))
    }

    /// What the client is told: a [`Detail::Message`] as is, otherwise the display.
    pub fn message(&self) -> String {
        match &self.detail {
            Detail::Message(message) | Detail::Unavailable(message) => message.clone(),
            _ => self.to_string(),
        }
    }

    /// A signature problem: `voucher_payload` for a wrong length, else `voucher_signature`.
    pub fn signature(id: Option<ChannelId>, fault: SignatureFault) -> Self {
        Self::with(fault.reason(), id, Detail::Signature(fault))
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason.as_str())?;
        if let Some(id) = self.channel_id {
            write!(f, " on channel {id}")?;
        }
        match &self.detail {
            Detail::None => Ok(()),
            Detail::CumulativeMismatch(m) => {
                write!(f, ": voucher ceiling {}, expected {}", m.got, m.expected)
            }
            Detail::ExceedsBalance {
                max_claimable,
                balance,
            } => {
                write!(f, ": ceiling {max_claimable} above balance {balance}")
            }
            Detail::WithdrawalPending { requested_at } => {
                write!(f, ": withdrawal requested at {requested_at}")
            }
            Detail::BelowClaimed {
                max_claimable,
                total_claimed,
            } => {
                write!(f, ": ceiling {max_claimable} vs claimed {total_claimed}")
            }
            Detail::ChargeExceedsPrice { actual, price } => {
                write!(f, ": charge {actual} above reserved price {price}")
            }
            Detail::Signature(fault) => write!(f, ": {fault}"),
            Detail::Erc1271Required => f.write_str(": smart-wallet payer, use ERC-1271"),
            Detail::Message(message) | Detail::Unavailable(message) => write!(f, ": {message}"),
        }
    }
}

impl std::error::Error for Reject {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reject_stays_small_enough_to_return_by_value() {
        assert!(
            std::mem::size_of::<Reject>() <= 96,
            "{}",
            std::mem::size_of::<Reject>()
        );
    }

    #[test]
    fn malformed_length_maps_to_payload_and_other_faults_to_signature() {
        let id = Some(ChannelId::default());
        assert_eq!(
            Reject::signature(id, SignatureFault::Length { got: 64 }).reason,
            Reason::VoucherPayload
        );
        for fault in [
            SignatureFault::RecoveryByte { v: 2 },
            SignatureFault::HighS,
            SignatureFault::OutOfRange,
            SignatureFault::Unrecoverable,
            SignatureFault::WrongSigner,
        ] {
            assert_eq!(
                Reject::signature(id, fault).reason,
                Reason::VoucherSignature
            );
        }
    }

    #[test]
    fn an_explained_reject_answers_its_message_as_is() {
        let r = Reject::explained(Reason::RpcReadFailed, None, "retry later");
        assert_eq!(r.message(), "retry later");
        assert_eq!(
            r.to_string(),
            "invalid_batch_settlement_evm_rpc_read_failed: retry later"
        );
        let plain = Reject::new(Reason::ChannelBusy, None);
        assert_eq!(plain.message(), plain.to_string());
    }

    #[test]
    fn display_names_the_reason_and_the_numbers() {
        let r = Reject::with(
            Reason::ChargeExceedsSignedCumulative,
            None,
            Detail::ChargeExceedsPrice {
                actual: 11,
                price: 10,
            },
        );
        assert_eq!(
            r.to_string(),
            "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative: charge 11 above reserved price 10"
        );
    }
}
