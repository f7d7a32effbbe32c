//! The JSON shapes of the admin API. Amounts are decimal strings of atomic units (a `u128`
//! does not fit a JavaScript number); times are unix seconds.

use alloy_primitives::Address;
use serde::Serialize;
use x402_upto::ledger::ChannelRecord;
use x402_upto::typed_data::ChannelId;

/// `u128` as a decimal string.
pub mod amount {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// `Option<u128>` as a decimal string or `null`.
    pub mod option {
        use serde::Serializer;

        pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }
    }
}

/// A channel's timed withdrawal.
#[derive(Clone, Debug, Serialize)]
pub struct Withdrawal {
    /// `none`, `pending` (the delay runs; vouchers are refused and the settler claims), or
    /// `ready` (past the deadline: the payer may finalize and take the unclaimed balance).
    pub state: &'static str,
    /// `withdrawRequestedAt`, when one was started.
    pub requested_at: Option<u64>,
    /// `withdrawRequestedAt + withdrawDelay`: what is unclaimed by then is lost.
    pub deadline: Option<u64>,
    /// Seconds until the deadline (negative: past it).
    pub seconds_left: Option<i64>,
}

impl Withdrawal {
    pub fn of(record: &ChannelRecord, now: u64) -> Self {
        let at = record.onchain.withdraw_requested_at;
        if at == 0 {
            return Self {
                state: "none",
                requested_at: None,
                deadline: None,
                seconds_left: None,
            };
        }
        let delay = record.config.withdrawDelay.to::<u64>();
        let deadline = at.saturating_add(delay);
        let left =
            i64::try_from(deadline).unwrap_or(i64::MAX) - i64::try_from(now).unwrap_or(i64::MAX);
        Self {
            state: if left > 0 { "pending" } else { "ready" },
            requested_at: Some(at),
            deadline: Some(deadline),
            seconds_left: Some(left),
        }
    }
}

/// One channel as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelView {
    pub channel_id: ChannelId,
    pub payer: Address,
    pub payer_authorizer: Address,
    pub receiver: Address,
    pub token: Address,
    /// Mirrored on-chain balance.
    #[serde(with = "amount")]
    pub balance: u128,
    /// Sum of actual charges (what the server may claim).
    #[serde(with = "amount")]
    pub charged: u128,
    /// Mirrored on-chain `totalClaimed`.
    #[serde(with = "amount")]
    pub claimed: u128,
    /// `charged - claimed`: money earned but not yet on chain.
    #[serde(with = "amount")]
    pub unclaimed: u128,
    /// `balance - charged`: what the payer could still spend (or get back).
    #[serde(with = "amount")]
    pub remaining: u128,
    /// The latest voucher's ceiling.
    #[serde(with = "amount")]
    pub signed_max_claimable: u128,
    /// The last paid request (unix seconds), if any.
    pub last_voucher_at: Option<u64>,
    /// When the mirror was last read from chain.
    pub onchain_synced_at: u64,
    pub withdrawal: Withdrawal,
    /// A request holds the channel right now.
    pub held: bool,
    /// The payer is on the block list.
    pub blocked: bool,
}

impl ChannelView {
    pub fn of(record: &ChannelRecord, now: u64, held: bool, blocked: bool) -> Self {
        Self {
            channel_id: record.channel_id,
            payer: record.config.payer,
            payer_authorizer: record.config.payerAuthorizer,
            receiver: record.config.receiver,
            token: record.config.token,
            balance: record.onchain.balance,
            charged: record.charged,
            claimed: record.onchain.total_claimed,
            unclaimed: record.unclaimed(),
            remaining: record.onchain.balance.saturating_sub(record.charged),
            signed_max_claimable: record.signed_max_claimable,
            last_voucher_at: (record.last_request_at != 0).then_some(record.last_request_at),
            onchain_synced_at: record.onchain_synced_at,
            withdrawal: Withdrawal::of(record, now),
            held,
            blocked,
        }
    }
}
