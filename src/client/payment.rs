//! Building a payment: the offer chosen from a 402 ([`Target`]), the cumulative voucher,
//! the ERC-3009 deposit authorization and the `PAYMENT-SIGNATURE` envelope.

use alloy::primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256};
use serde_json::{Value, json};

use super::{ClientError, PayingClient};
use crate::clock::unix_now as now;
use crate::typed_data::{
    ChannelConfig, ChannelId, EscrowDomain, ReceiveWithAuthorization, erc3009_deposit_nonce,
    sign_receive_with_authorization, sign_voucher, token_domain,
};
use crate::wire::{
    BATCH_SETTLEMENT, BatchSettlementExtra, PaymentRequired, PaymentRequirements, encode_header,
};

/// One chosen offer and the channel it maps to.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The `batch-settlement` offer, echoed as `accepted`.
    pub(crate) offer: PaymentRequirements,
    /// Its `extra`, parsed.
    pub(super) extra: BatchSettlementExtra,
    /// The offer's per-request maximum.
    pub(crate) price: u128,
    /// Our channel with its receiver.
    pub(super) config: ChannelConfig,
    /// That channel's id.
    pub(crate) id: ChannelId,
    /// The escrow domain vouchers are signed in.
    pub(super) domain: EscrowDomain,
    /// The receiver (refused once it cheats).
    pub(crate) pay_to: Address,
    /// The 402's `resource`, echoed in the payment.
    pub(crate) resource: Value,
}

impl PayingClient {
    /// The `batch-settlement` eip155 offer of a 402 and the channel this client pays it on.
    pub(crate) fn target(&self, required: &PaymentRequired) -> Result<Target, ClientError> {
        let offer = required
            .accepts
            .iter()
            .find(|o| o.scheme == BATCH_SETTLEMENT && o.eip155_network().is_some())
            .ok_or_else(|| ClientError::NoOffer("no batch-settlement eip155 entry".into()))?
            .clone();
        let bad = |w: &str| ClientError::NoOffer(w.to_owned());
        let extra = offer
            .batch_extra()
            .map_err(|e| bad(&format!("extra: {e}")))?;
        let price = offer.amount_u128().ok_or_else(|| bad("amount"))?;
        let chain_id = offer
            .eip155_network()
            .map(|n| n.chain_id())
            .ok_or_else(|| bad("network"))?;
        let pay_to: Address = offer.pay_to.parse().map_err(|_| bad("payTo"))?;
        let token: Address = offer.asset.parse().map_err(|_| bad("asset"))?;
        self.refuse_cheater(pay_to)?;
        let config = ChannelConfig {
            payer: self.config.payer.address(),
            payerAuthorizer: self.config.voucher_key().address(),
            receiver: pay_to,
            receiverAuthorizer: extra.receiver_authorizer,
            token,
            withdrawDelay: U40::saturating_from(extra.withdraw_delay),
            salt: self.config.salt,
        };
        let domain = EscrowDomain::new(chain_id, self.config.escrow);
        let id = domain.channel_id(&config);
        Ok(Target {
            extra,
            price,
            config,
            id,
            domain,
            pay_to,
            resource: serde_json::to_value(&required.resource).unwrap_or(Value::Null),
            offer,
        })
    }

    /// Our voucher for `t`'s channel up to `max`, as the payload's `voucher`.
    pub(super) fn voucher_json(&self, t: &Target, max: u128) -> Result<Value, ClientError> {
        let sig = sign_voucher(self.config.voucher_key(), &t.domain, t.id, max)
            .map_err(|e| ClientError::Signing(e.to_string()))?;
        Ok(
            json!({"channelId": t.id.0, "maxClaimableAmount": max.to_string(),
                  "signature": Bytes::from(sig.as_bytes().to_vec())}),
        )
    }

    /// The `PAYMENT-SIGNATURE` header value carrying `payload` for `t`'s offer.
    pub(super) fn envelope(&self, t: &Target, payload: Value) -> String {
        encode_header(&Self::payment_payload(t, payload))
    }

    /// The `PaymentPayload` carrying `payload` for `t`'s offer (the header's JSON; MCP sends
    /// it as is in `_meta`).
    pub(super) fn payment_payload(t: &Target, payload: Value) -> Value {
        json!({"x402Version": 2, "accepted": t.offer, "payload": payload, "resource": t.resource})
    }

    /// The `PAYMENT-SIGNATURE` for the next request, and the deposit amount if one is made.
    /// With `cover`, a deposit is made unless the balance covers `charged + cover` (a
    /// stream's whole budget), so that its renewals never run into the balance.
    pub(super) fn build_payment(
        &self,
        t: &Target,
        cover: Option<u128>,
    ) -> Result<(String, Option<u128>), ClientError> {
        let (payment, deposit) = self.next_payment(t, cover)?;
        Ok((encode_header(&payment), deposit))
    }

    /// The `PaymentPayload` for the next call on `t`'s channel (a voucher, with a deposit
    /// when the balance does not cover it), and the deposit amount if one is made; see
    /// [`Self::build_payment`]. The signed ceiling is recorded before it is sent.
    pub(crate) fn next_payment(
        &self,
        t: &Target,
        cover: Option<u128>,
    ) -> Result<(Value, Option<u128>), ClientError> {
        let mut state = self.state(t)?.unwrap_or_else(|| self.fresh(t));
        let max = state.charged.saturating_add(t.price);
        let voucher = self.voucher_json(t, max)?;
        let mut payload =
            json!({"type": "voucher", "channelConfig": state.config, "voucher": voucher});
        let mut deposit = None;
        let need = state
            .charged
            .saturating_add(cover.unwrap_or(t.price).max(t.price));
        if need > state.balance {
            let min_deposit = t
                .extra
                .other
                .get("minDeposit")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<u128>().ok())
                .unwrap_or(0);
            let amount = t
                .price
                .saturating_mul(self.config.deposit_multiplier)
                .max(min_deposit)
                .max(need - state.balance);
            if state.deposited.saturating_add(amount) > self.config.spend_limit {
                return Err(ClientError::SpendLimit {
                    needed: amount,
                    deposited: state.deposited,
                    limit: self.config.spend_limit,
                });
            }
            payload["type"] = json!("deposit");
            payload["deposit"] = json!({"amount": amount.to_string(),
                "authorization": {"erc3009Authorization": self.erc3009(t, amount)?}});
            deposit = Some(amount);
        }
        state.signed_max = state.signed_max.max(max);
        self.store(state)?;
        Ok((Self::payment_payload(t, payload), deposit))
    }

    /// The payer's ERC-3009 `receiveWithAuthorization` of `amount` to the collector, with a
    /// nonce bound to `t`'s channel.
    fn erc3009(&self, t: &Target, amount: u128) -> Result<Value, ClientError> {
        let salt = B256::from(rand::random::<[u8; 32]>());
        let valid_before = U256::from(now() + t.offer.max_timeout_seconds.max(60));
        let auth = ReceiveWithAuthorization {
            from: self.config.payer.address(),
            to: self.config.collector,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: valid_before,
            nonce: erc3009_deposit_nonce(t.id, salt),
        };
        let domain = token_domain(
            &t.extra.name,
            &t.extra.version,
            t.domain.chain_id(),
            t.config.token,
        );
        let sig = sign_receive_with_authorization(&self.config.payer, &domain, &auth)
            .map_err(|e| ClientError::Signing(e.to_string()))?;
        Ok(
            json!({"validAfter": "0", "validBefore": valid_before.to_string(), "salt": salt,
                  "signature": Bytes::from(sig.as_bytes().to_vec())}),
        )
    }
}
