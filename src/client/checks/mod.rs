//! The rules that catch a cheating server, as one pure function: [`check`] takes the
//! client's channel state, the [`Terms`] it paid under and the server's decoded answer (a
//! `PAYMENT-RESPONSE`, a stream checkpoint, a corrective 402 or a refund), and returns the next
//! channel state or the [`Cheat`] it caught. No I/O: the caller loads and stores the state
//! and marks the server (`PayingClient::cheated`).
//!
//! The request path, the stream path (renewal checkpoints and the final settlement), the
//! corrective-402 resync and the refund all come here, so one rule is written once.

use alloy_primitives::Address;

use super::state::ChannelState;
use crate::typed_data::{ChannelId, EscrowDomain};
use crate::verify::recover_signer;
use crate::wire::{BATCH_SETTLEMENT, ChannelStateWire, PaymentRequired, SettleResponse};

/// What the client pays under on one channel: the facts an answer is checked against.
#[derive(Clone, Copy, Debug)]
pub(super) struct Terms<'a> {
    /// The offer's CAIP-2 network.
    pub(super) network: &'a str,
    /// Our channel.
    pub(super) channel: ChannelId,
    /// The offer's per-request maximum.
    pub(super) price: u128,
    /// The escrow domain our vouchers are signed in.
    pub(super) domain: &'a EscrowDomain,
    /// Who signs our vouchers (`payerAuthorizer`).
    pub(super) voucher_signer: Address,
}

/// A metered stream's payment so far.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamProgress {
    /// `chargedCumulativeAmount` before the stream.
    pub(super) base: u128,
    /// Highest ceiling signed for this stream.
    pub(super) signed: u128,
    /// The stream's charge as last confirmed by the server.
    pub(super) confirmed: u128,
    /// Deposit made with the stream's first request.
    pub(super) deposit: Option<u128>,
}

/// The server's answer being checked.
#[derive(Clone, Copy, Debug)]
pub(super) enum Response<'a> {
    /// The `PAYMENT-RESPONSE` of a paid request (with the deposit it carried, if any).
    Paid {
        settle: &'a SettleResponse,
        deposit: Option<u128>,
    },
    /// The receipt of a request that failed after paying with a deposit: it must charge
    /// nothing, but the deposit is on chain all the same.
    Failed {
        settle: &'a SettleResponse,
        deposit: Option<u128>,
    },
    /// A stream's renewal checkpoint (`last == false`) or its final settlement.
    Stream {
        settle: &'a SettleResponse,
        progress: StreamProgress,
        last: bool,
    },
    /// A corrective 402 (`cumulative_amount_mismatch`) offering the server's view.
    Corrective(&'a PaymentRequired),
    /// The successful answer to a cooperative refund.
    Refund(&'a SettleResponse),
}

/// What the server did wrong: the `what` the client reports in `ServerCheated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Cheat(pub(super) &'static str);

/// The channel state after `response`, or how the server cheated.
pub(super) fn check(
    state: &ChannelState,
    terms: &Terms<'_>,
    response: Response<'_>,
) -> Result<ChannelState, Cheat> {
    match response {
        Response::Paid { settle, deposit } => check_paid(state, terms, settle, deposit),
        Response::Failed { settle, deposit } => {
            if !settle.success {
                // A failure receipt (the server could not settle: its store or chain was
                // down) states nothing about the channel: nothing to take in, nothing
                // dishonest. The next request meets the server's state (a corrective 402).
                return Ok(state.clone());
            }
            let charged = settle.extra.as_ref().and_then(|e| e.charged_amount);
            if charged.is_some_and(|c| c != 0) {
                return Err(Cheat("charged a failed request"));
            }
            check_paid(state, terms, settle, deposit)
        }
        Response::Stream {
            settle,
            progress,
            last,
        } => check_stream(state, terms, settle, &progress, last),
        Response::Corrective(required) => check_corrective(state, terms, required),
        Response::Refund(settle) => check_refund(state, terms, settle),
    }
}

/// Rules every receipt shares, in the order they are reported: `chargedAmount` and
/// `channelState` present, success, our network, our channel.
fn receipt<'a>(
    terms: &Terms<'_>,
    settle: &'a SettleResponse,
) -> Result<(u128, &'a ChannelStateWire), Cheat> {
    let extra = settle.extra.as_ref();
    let (Some(charged), Some(cs)) = (
        extra.and_then(|e| e.charged_amount),
        extra.and_then(|e| e.channel_state.as_ref()),
    ) else {
        return Err(Cheat("PAYMENT-RESPONSE without chargedAmount/channelState"));
    };
    first_broken(&[
        (settle.success, "success is false on a paid response"),
        (settle.network == terms.network, "network differs"),
        (
            cs.channel_id == terms.channel.0,
            "channelState is for another channel",
        ),
    ])?;
    Ok((charged, cs))
}

/// The first rule that does not hold, as a [`Cheat`].
fn first_broken(rules: &[(bool, &'static str)]) -> Result<(), Cheat> {
    match rules.iter().find(|(ok, _)| !ok) {
        Some((_, what)) => Err(Cheat(what)),
        None => Ok(()),
    }
}

/// Whether the receipt's `amount` is the deposit we made (when we made one).
fn deposit_matches(settle: &SettleResponse, deposit: Option<u128>) -> bool {
    deposit.is_none_or(|d| settle.amount.as_deref() == Some(d.to_string().as_str()))
}

/// One paid request: charge ≤ price, cumulative = previous + charge and within the voucher
/// we signed (previous + price), the deposit as made.
fn check_paid(
    state: &ChannelState,
    terms: &Terms<'_>,
    settle: &SettleResponse,
    deposit: Option<u128>,
) -> Result<ChannelState, Cheat> {
    let (charged, cs) = receipt(terms, settle)?;
    let cumulative = cs.charged_cumulative_amount.unwrap_or(0);
    first_broken(&[
        (
            charged <= terms.price,
            "charged more than the offered maximum",
        ),
        (
            cumulative == state.charged.saturating_add(charged),
            "cumulative is not previous + charge",
        ),
        (
            cumulative <= state.charged.saturating_add(terms.price),
            "cumulative above the signed voucher",
        ),
        (deposit_matches(settle, deposit), "deposit amount differs"),
    ])?;
    let mut next = state.clone();
    next.charged = cumulative;
    next.balance = cs.balance;
    next.deposited = next.deposited.saturating_add(deposit.unwrap_or(0));
    next.requests += 1;
    Ok(next)
}

/// A stream checkpoint or its end: the stream's charge never goes down, never passes what
/// we signed for it, and the cumulative is the stream's baseline plus that charge. The
/// deposit (already counted when the stream started) is checked at the end.
fn check_stream(
    state: &ChannelState,
    terms: &Terms<'_>,
    settle: &SettleResponse,
    progress: &StreamProgress,
    last: bool,
) -> Result<ChannelState, Cheat> {
    let (charged, cs) = receipt(terms, settle)?;
    let cumulative = cs.charged_cumulative_amount.unwrap_or(0);
    first_broken(&[
        (
            charged >= progress.confirmed,
            "the stream's charge went down",
        ),
        (
            charged <= progress.signed.saturating_sub(progress.base),
            "charged more than the vouchers signed for this stream",
        ),
        (
            cumulative == progress.base.saturating_add(charged),
            "cumulative is not previous + charge",
        ),
        (
            !last || deposit_matches(settle, progress.deposit),
            "deposit amount differs",
        ),
    ])?;
    let mut next = state.clone();
    next.charged = cumulative;
    next.balance = cs.balance;
    if last {
        next.requests += 1;
    }
    Ok(next)
}

/// A corrective 402 is adopted only for our channel, and a charge above what we know only
/// if the server shows our own signature over a ceiling covering it (or the chain's
/// `totalClaimed` covers it: only our signature can have raised that).
fn check_corrective(
    state: &ChannelState,
    terms: &Terms<'_>,
    required: &PaymentRequired,
) -> Result<ChannelState, Cheat> {
    let extra = required
        .accepts
        .iter()
        .find(|o| o.scheme == BATCH_SETTLEMENT)
        .and_then(|o| o.batch_extra().ok())
        .ok_or(Cheat("corrective 402 without an offer"))?;
    let cs = extra
        .channel_state
        .ok_or(Cheat("corrective 402 without channelState"))?;
    if cs.channel_id != terms.channel.0 {
        return Err(Cheat("corrective 402 for another channel"));
    }
    let charged = cs.charged_cumulative_amount.unwrap_or(cs.total_claimed);
    if charged > state.charged {
        let proven = extra.voucher_state.as_ref().is_some_and(|v| {
            let (Some(max), Some(sig)) = (v.signed_max_claimable, v.signature.as_ref()) else {
                return false;
            };
            let digest = terms.domain.voucher_digest(terms.channel, max);
            max >= charged && recover_signer(&digest, sig).ok() == Some(terms.voucher_signer)
        });
        if !proven && charged > cs.total_claimed {
            return Err(Cheat("corrective 402 claims charges we never signed"));
        }
    }
    let mut next = state.clone();
    next.charged = charged;
    next.balance = cs.balance;
    Ok(next)
}

/// A refund answer names our channel (when it carries the channel at all); its balance is
/// the channel's after the refund.
fn check_refund(
    state: &ChannelState,
    terms: &Terms<'_>,
    settle: &SettleResponse,
) -> Result<ChannelState, Cheat> {
    let mut next = state.clone();
    if let Some(cs) = settle.extra.as_ref().and_then(|e| e.channel_state.as_ref()) {
        if cs.channel_id != terms.channel.0 {
            return Err(Cheat("refund response for another channel"));
        }
        next.balance = cs.balance;
    }
    Ok(next)
}

#[cfg(test)]
mod tests;
