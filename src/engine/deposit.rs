//! The deposit flow: a voucher that comes with the payer's ERC-3009 deposit. Everything that
//! can be checked before the relayer spends gas is checked first; the deposit is then sent
//! and the channel reserved as after it.

use alloy_primitives::B256;
use serde_json::Value;

use super::decode::Checked;
use super::{Authorized, Engine, guards, now};
use crate::ledger::{ChannelRecord, Detail, Reject};
use crate::reason::Reason;
use crate::store::Store;
use crate::typed_data::ChannelId;
use crate::wire::BatchPayload;

impl<S: Store + 'static> Engine<S> {
    pub(super) async fn deposit(
        &self,
        checked: Checked,
        price: u128,
    ) -> Result<Authorized, Reject> {
        let id = checked.channel_id;
        let BatchPayload::Deposit {
            voucher, deposit, ..
        } = &checked.payload
        else {
            return Err(Reject::explained(Reason::PayloadType, None, ""));
        };
        let Some(chain) = self.inner.chain.clone() else {
            return Err(Reject::new(Reason::DepositSimulationFailed, Some(id)));
        };
        let Some(auth) = &deposit.authorization.erc3009_authorization else {
            return Err(Reject::new(Reason::Erc3009AuthorizationRequired, Some(id)));
        };
        // The relayer pays the gas of every deposit: an advertised minimum is enforced, so
        // dust deposits cannot make it spend more on gas than the channel can bring in.
        if let Some(min) = self.min_deposit()
            && deposit.amount < min
        {
            return Err(Reject::explained(
                Reason::DepositBelowMinDeposit,
                Some(id),
                format!("deposit {} is below minDeposit {min}", deposit.amount),
            ));
        }
        // Everything that can be checked before spending gas is checked first: the ERC-3009
        // validity window, the voucher signature, and the voucher against the channel as it
        // will be after the deposit.
        let t = alloy_primitives::U256::from(now());
        if auth.valid_after > t {
            return Err(Reject::new(
                Reason::PayloadAuthorizationValidAfter,
                Some(id),
            ));
        }
        if auth.valid_before <= t {
            return Err(Reject::new(
                Reason::PayloadAuthorizationValidBefore,
                Some(id),
            ));
        }
        // Single flight per channel and per authorization, before any read, estimate or
        // send: six copies of one header in parallel must cost one transaction, not six
        // (five of them reverting). A replay of an authorization this server already
        // submitted costs none.
        let nonce = crate::typed_data::erc3009_deposit_nonce(id, auth.salt);
        let mut flight = self
            .inner
            .deposits
            .begin(id, nonce)
            .map_err(|blocked| deposit_blocked(id, nonce, blocked))?;
        let verified = self.verify_signature(&checked.config, voucher, id).await?;
        if self.inner.store.is_shared() {
            // The cache may be behind another instance's charges (deposits are rare: one
            // read is cheap next to the transaction).
            self.reload(id, "deposit").await?;
        }
        let mut projected = match self.inner.ledger.record(&id) {
            Some(record) => {
                if self.inner.ledger.is_held(&id) {
                    return Err(Reject::busy(id));
                }
                record
            }
            None => {
                // Same limit as any cold read; an empty channel is expected here (first
                // deposit), so the negative cache is not consulted.
                let state = self
                    .inner
                    .cold
                    .read(chain.as_ref(), id, false)
                    .await
                    .map_err(|f| Self::chain_reject(id, f))?;
                ChannelRecord::from_chain(id, checked.config.clone(), state, now())
            }
        };
        projected.onchain.balance = projected.onchain.balance.saturating_add(deposit.amount);
        projected
            .check_voucher(voucher.max_claimable_amount, price)
            .map_err(|mut r| {
                // A corrective 402 reports the channel as it is, not as it would be.
                if let Detail::CumulativeMismatch(m) = &mut r.detail {
                    m.state.balance = m.state.balance.saturating_sub(deposit.amount);
                }
                r
            })?;
        // Across instances sharing a store: the first to record the authorization sends it.
        match self.inner.store.first_use_of_authorization(nonce).await {
            Ok(true) => {}
            Ok(false) => {
                return Err(deposit_blocked(id, nonce, guards::DepositBlocked::Used));
            }
            Err(e) => return Err(self.store_down(id, &e)),
        }
        flight.submitting();
        let outcome = match chain.deposit(&checked.config, deposit.amount, auth).await {
            Ok(outcome) => outcome,
            Err(f) => {
                if f.reason == Reason::DepositSimulationFailed {
                    // Refused by the estimate: nothing was broadcast, so the same
                    // authorization may be retried (the estimate refuses a used one again).
                    flight.not_sent();
                    self.inner.store.forget_authorization(nonce).await;
                }
                return Err(Self::chain_reject(id, f));
            }
        };
        self.inner.cold.forget_empty(&id);
        self.inner
            .ledger
            .upsert_from_chain(checked.config.clone(), outcome.state, now());
        // Verified above (no second recovery, no second ERC-1271 call).
        let reservation = self.inner.ledger.reserve(verified, price)?;
        self.hold(reservation, Some((outcome.tx_hash, outcome.amount)))
            .await
    }

    /// The advertised `extra.minDeposit` (a decimal string, as the stock server writes it),
    /// if any. `EngineConfig::validate` does not look at `extra`, so an unparsable value is
    /// logged and not enforced rather than refusing every deposit.
    fn min_deposit(&self) -> Option<u128> {
        let raw = self.inner.config.extra.get("minDeposit")?;
        let parsed = match raw {
            Value::String(s) => s.parse::<u128>().ok(),
            Value::Number(n) => n.as_u64().map(u128::from),
            _ => None,
        };
        if parsed.is_none() {
            tracing::warn!(value = %raw, "extra.minDeposit is not an amount; not enforced");
        }
        parsed
    }
}

/// The rejection of a deposit that may not start (see `guards.rs`).
fn deposit_blocked(id: ChannelId, nonce: B256, blocked: guards::DepositBlocked) -> Reject {
    let (reason, message) = match blocked {
        guards::DepositBlocked::InFlight => (
            Reason::ChannelBusy,
            "a deposit on this channel or with this authorization is in flight; retry once it \
             is answered"
                .to_owned(),
        ),
        // What the token would answer (the collector's `receiveWithAuthorization` reverts on
        // a used nonce), without spending an estimate or a transaction.
        guards::DepositBlocked::Used => (
            Reason::DepositSimulationFailed,
            format!(
                "ERC-3009 authorization {nonce} was already submitted; sign a new one with a \
                 fresh salt"
            ),
        ),
    };
    metrics::counter!("x402_deposit_duplicates_refused_total").increment(1);
    Reject::explained(reason, Some(id), message)
}
