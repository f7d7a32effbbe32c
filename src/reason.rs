//! x402 error-reason codes, as one `Copy` enum.
//!
//! The strings are the wire values of `invalidReason` / `errorReason` / the 402 `error` field:
//! every `invalid_batch_settlement_evm_*` code of the batch-settlement EVM spec's error table,
//! one code of the stock SDK server (`…_deposit_below_min_deposit`), plus the core x402 v2
//! codes (spec §9) the HTTP layer needs. [`Reason::as_str`] and
//! [`FromStr`] are exact inverses; a test walks every variant.

use std::fmt;
use std::str::FromStr;

/// Declares the enum, its string table and `ALL` from one list so they cannot drift.
macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $variant:ident => $code:literal, )+) => {
        /// An x402 error reason. `Copy`, one byte; convert with [`Reason::as_str`] / [`str::parse`].
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Reason {
            $( $(#[doc = $doc])* $variant, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )+ ];

            /// The wire string, e.g. `"invalid_batch_settlement_evm_channel_busy"`.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$variant => $code, )+
                }
            }
        }

        impl FromStr for Reason {
            type Err = ReasonParseError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $code => Ok(Reason::$variant), )+
                    _ => Err(ReasonParseError(s.chars().take(MAX_ECHO).collect())),
                }
            }
        }
    };
}

/// Longest prefix of an unknown code echoed back in [`ReasonParseError`]; input is untrusted.
const MAX_ECHO: usize = 96;

/// A string that is not one of the known reason codes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown x402 reason code {0:?}")]
pub struct ReasonParseError(pub String);

reasons! {
    // ---- core x402 v2 (spec §9) ----
    /// `PaymentPayload` could not be decoded or is structurally wrong.
    InvalidPayload => "invalid_payload",
    /// The network is not one this server accepts.
    InvalidNetwork => "invalid_network",
    /// The scheme does not match the requirements.
    InvalidScheme => "invalid_scheme",
    /// The scheme is not supported at all.
    UnsupportedScheme => "unsupported_scheme",
    /// `x402Version` is not 2.
    InvalidX402Version => "invalid_x402_version",
    /// `accepted` does not match any offered `PaymentRequirements`.
    InvalidPaymentRequirements => "invalid_payment_requirements",
    /// The payer cannot cover the amount.
    InsufficientFunds => "insufficient_funds",
    /// Verification failed for an internal reason (not the client's fault).
    UnexpectedVerifyError => "unexpected_verify_error",
    /// Settlement failed for an internal reason (not the client's fault).
    UnexpectedSettleError => "unexpected_settle_error",

    // ---- batch-settlement on EVM (spec error table) ----
    /// Authorizer address does not match the expected receiver authorizer.
    AuthorizerAddressMismatch => "invalid_batch_settlement_evm_authorizer_address_mismatch",
    /// Another request holds the channel; the client should retry shortly.
    ChannelBusy => "invalid_batch_settlement_evm_channel_busy",
    /// The channel config does not hash to the claimed channel id.
    ChannelIdMismatch => "invalid_batch_settlement_evm_channel_id_mismatch",
    /// No channel with a positive balance for this id.
    ChannelNotFound => "invalid_batch_settlement_evm_channel_not_found",
    /// Reading on-chain channel state failed.
    ChannelStateReadFailed => "invalid_batch_settlement_evm_channel_state_read_failed",
    /// The actual charge would exceed the voucher's signed ceiling.
    ChargeExceedsSignedCumulative => "invalid_batch_settlement_evm_charge_exceeds_signed_cumulative",
    /// Claim payload is malformed.
    ClaimPayload => "invalid_batch_settlement_evm_claim_payload",
    /// Claim simulation failed.
    ClaimSimulationFailed => "invalid_batch_settlement_evm_claim_simulation_failed",
    /// Claim transaction failed.
    ClaimTransactionFailed => "invalid_batch_settlement_evm_claim_transaction_failed",
    /// Corrective 402: the voucher ceiling is not `chargedCumulativeAmount + amount`.
    CumulativeAmountMismatch => "invalid_batch_settlement_evm_cumulative_amount_mismatch",
    /// The voucher ceiling is not above on-chain `totalClaimed` (not below, for refunds).
    CumulativeBelowClaimed => "invalid_batch_settlement_evm_cumulative_below_claimed",
    /// The voucher ceiling exceeds the channel's effective balance.
    CumulativeExceedsBalance => "invalid_batch_settlement_evm_cumulative_exceeds_balance",
    /// Deposit payload is malformed.
    DepositPayload => "invalid_batch_settlement_evm_deposit_payload",
    /// Deposit below the advertised `extra.minDeposit` (not in the spec's table; the stock
    /// SDK server's code for the same refusal).
    DepositBelowMinDeposit => "invalid_batch_settlement_evm_deposit_below_min_deposit",
    /// Deposit simulation failed.
    DepositSimulationFailed => "invalid_batch_settlement_evm_deposit_simulation_failed",
    /// Deposit transaction failed.
    DepositTransactionFailed => "invalid_batch_settlement_evm_deposit_transaction_failed",
    /// EIP-2612 permit amount mismatch.
    Eip2612AmountMismatch => "invalid_batch_settlement_evm_eip2612_amount_mismatch",
    /// EIP-2612 permit asset mismatch.
    Eip2612AssetMismatch => "invalid_batch_settlement_evm_eip2612_asset_mismatch",
    /// EIP-2612 permit deadline expired.
    Eip2612DeadlineExpired => "invalid_batch_settlement_evm_eip2612_deadline_expired",
    /// EIP-2612 permit segment malformed.
    Eip2612InvalidFormat => "invalid_batch_settlement_evm_eip2612_invalid_format",
    /// EIP-2612 permit signature invalid.
    Eip2612InvalidSignature => "invalid_batch_settlement_evm_eip2612_invalid_signature",
    /// EIP-2612 permit owner is not the payer.
    Eip2612OwnerMismatch => "invalid_batch_settlement_evm_eip2612_owner_mismatch",
    /// EIP-2612 permit spender mismatch.
    Eip2612SpenderMismatch => "invalid_batch_settlement_evm_eip2612_spender_mismatch",
    /// ERC-20 approval asset mismatch.
    Erc20ApprovalAssetMismatch => "invalid_batch_settlement_evm_erc20_approval_asset_mismatch",
    /// Broadcasting the pre-signed ERC-20 approval failed.
    Erc20ApprovalBroadcastFailed => "invalid_batch_settlement_evm_erc20_approval_broadcast_failed",
    /// ERC-20 approval signer is not the payer.
    Erc20ApprovalFromMismatch => "invalid_batch_settlement_evm_erc20_approval_from_mismatch",
    /// ERC-20 approval segment malformed.
    Erc20ApprovalInvalidFormat => "invalid_batch_settlement_evm_erc20_approval_invalid_format",
    /// ERC-20 approval gas sponsorship unavailable.
    Erc20ApprovalUnavailable => "invalid_batch_settlement_evm_erc20_approval_unavailable",
    /// ERC-20 approval spender is not Permit2.
    Erc20ApprovalWrongSpender => "invalid_batch_settlement_evm_erc20_approval_wrong_spender",
    /// Deposit payload lacks the required `erc3009Authorization`.
    Erc3009AuthorizationRequired => "invalid_batch_settlement_evm_erc3009_authorization_required",
    /// The client's token balance cannot cover the deposit.
    InsufficientBalance => "invalid_batch_settlement_evm_insufficient_balance",
    /// The resource server has no channel session for this id.
    MissingChannel => "invalid_batch_settlement_evm_missing_channel",
    /// The token's EIP-712 domain (`name`, `version`) is missing from the requirements.
    MissingEip712Domain => "invalid_batch_settlement_evm_missing_eip712_domain",
    /// `accepted.network` does not match the requirements.
    NetworkMismatch => "invalid_batch_settlement_evm_network_mismatch",
    /// Nothing claimed-but-unsettled for this receiver/token.
    NothingToSettle => "invalid_batch_settlement_evm_nothing_to_settle",
    /// ERC-3009 `validAfter` is in the future.
    PayloadAuthorizationValidAfter => "invalid_batch_settlement_evm_payload_authorization_valid_after",
    /// ERC-3009 `validBefore` has passed.
    PayloadAuthorizationValidBefore => "invalid_batch_settlement_evm_payload_authorization_valid_before",
    /// Payload `type` is not valid for this operation.
    PayloadType => "invalid_batch_settlement_evm_payload_type",
    /// Not in the spec's table (this server's own): the operator blocked this payer; its
    /// vouchers and deposits are refused with nothing changed (refunds are still served).
    PayerBlocked => "invalid_batch_settlement_evm_payer_blocked",
    /// Permit2 allowance required before deposit.
    Permit2AllowanceRequired => "invalid_batch_settlement_evm_permit2_allowance_required",
    /// Permit2 amount mismatch.
    Permit2AmountMismatch => "invalid_batch_settlement_evm_permit2_amount_mismatch",
    /// Permit2 authorization missing.
    Permit2AuthorizationRequired => "invalid_batch_settlement_evm_permit2_authorization_required",
    /// Permit2 deadline expired.
    Permit2DeadlineExpired => "invalid_batch_settlement_evm_permit2_deadline_expired",
    /// Permit2 signature invalid.
    Permit2InvalidSignature => "invalid_batch_settlement_evm_permit2_invalid_signature",
    /// Permit2 spender is not the expected one.
    Permit2InvalidSpender => "invalid_batch_settlement_evm_permit2_invalid_spender",
    /// ERC-3009 `receiveWithAuthorization` signature invalid.
    ReceiveAuthorizationSignature => "invalid_batch_settlement_evm_receive_authorization_signature",
    /// Channel receiver authorizer is not `extra.receiverAuthorizer`.
    ReceiverAuthorizerMismatch => "invalid_batch_settlement_evm_receiver_authorizer_mismatch",
    /// Channel receiver is not `payTo`.
    ReceiverMismatch => "invalid_batch_settlement_evm_receiver_mismatch",
    /// Refund `amount` is non-numeric or non-positive (here also: a partial refund below the
    /// server's minimum, with the minimum in the message).
    RefundAmountInvalid => "invalid_batch_settlement_evm_refund_amount_invalid",
    /// Not in the spec's table (this server's own): a refund was already executed with a
    /// voucher at this cumulative amount. The refund `amount` is unsigned, so a refund
    /// voucher is spent by its refund; a paid request in between allows another.
    RefundAlreadyExecuted => "invalid_batch_settlement_evm_refund_already_executed",
    /// Not in the spec's table (this server's own): this channel had its allowed number of
    /// refunds in the current window (the relayer pays for each); the message says when
    /// the next one is allowed.
    RefundRateLimited => "invalid_batch_settlement_evm_refund_rate_limited",
    /// No refundable balance remains.
    RefundNoBalance => "invalid_batch_settlement_evm_refund_no_balance",
    /// Refund payload is malformed.
    RefundPayload => "invalid_batch_settlement_evm_refund_payload",
    /// Refund simulation failed.
    RefundSimulationFailed => "invalid_batch_settlement_evm_refund_simulation_failed",
    /// Refund transaction failed.
    RefundTransactionFailed => "invalid_batch_settlement_evm_refund_transaction_failed",
    /// Reading required on-chain data failed.
    RpcReadFailed => "invalid_batch_settlement_evm_rpc_read_failed",
    /// `scheme` is not `batch-settlement`.
    SchemeNotBatchSettlement => "invalid_batch_settlement_evm_scheme",
    /// Settle payload is malformed.
    SettlePayload => "invalid_batch_settlement_evm_settle_payload",
    /// Settle simulation failed.
    SettleSimulationFailed => "invalid_batch_settlement_evm_settle_simulation_failed",
    /// Settle transaction failed.
    SettleTransactionFailed => "invalid_batch_settlement_evm_settle_transaction_failed",
    /// Channel token is not the requirements' asset.
    TokenMismatch => "invalid_batch_settlement_evm_token_mismatch",
    /// A submitted transaction reverted.
    TransactionReverted => "invalid_batch_settlement_evm_transaction_reverted",
    /// Settle payload asked for an unknown action.
    UnknownSettleAction => "invalid_batch_settlement_evm_unknown_settle_action",
    /// Voucher payload is malformed (e.g. a signature of the wrong length).
    VoucherPayload => "invalid_batch_settlement_evm_voucher_payload",
    /// The voucher signature does not recover to the channel's signer.
    VoucherSignature => "invalid_batch_settlement_evm_voucher_signature",
    /// Waiting for a receipt failed.
    WaitForReceiptFailed => "invalid_batch_settlement_evm_wait_for_receipt_failed",
    /// Channel withdraw delay is not `extra.withdrawDelay`.
    WithdrawDelayMismatch => "invalid_batch_settlement_evm_withdraw_delay_mismatch",
    /// Withdraw delay outside 15 min – 30 days.
    WithdrawDelayOutOfRange => "invalid_batch_settlement_evm_withdraw_delay_out_of_range",
}

impl Reason {
    /// True for the scheme-specific `invalid_batch_settlement_evm_*` codes.
    pub fn is_batch_settlement(self) -> bool {
        self.as_str().starts_with("invalid_batch_settlement_evm_")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_reason_round_trips_through_its_string() {
        let mut seen = HashSet::new();
        for &reason in Reason::ALL {
            let s = reason.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert_eq!(s.parse::<Reason>(), Ok(reason));
            assert_eq!(reason.to_string(), s);
        }
        // 64 from the spec's table, 1 from the stock SDK (deposit_below_min_deposit), 3 of
        // ours (refund_already_executed, refund_rate_limited, payer_blocked), 9 core.
        assert_eq!(Reason::ALL.len(), 68 + 9);
    }

    #[test]
    fn all_batch_settlement_codes_of_the_spec_table_are_present() {
        let batch = Reason::ALL
            .iter()
            .filter(|r| r.is_batch_settlement())
            .count();
        assert_eq!(batch, 68);
        for core in [
            "invalid_payload",
            "insufficient_funds",
            "unexpected_settle_error",
        ] {
            assert!(
                !core
                    .parse::<Reason>()
                    .map(Reason::is_batch_settlement)
                    .unwrap_or(true)
            );
        }
    }

    #[test]
    fn unknown_codes_are_rejected_and_echo_is_bounded() {
        let long = "x".repeat(10_000);
        let err = long.parse::<Reason>().err().map(|e| e.0.len());
        assert_eq!(err, Some(MAX_ECHO));
        assert!("INVALID_PAYLOAD".parse::<Reason>().is_err());
        assert!("".parse::<Reason>().is_err());
    }
}
