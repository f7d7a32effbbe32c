//! `POST /settle`: the four settle actions (`deposit`, `claim`, `settle`, and `refund`
//! behind the bearer token), each answered with a `SettleResponse`.

use alloy_primitives::{Address, B256, Bytes, U256};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Facilitator, Verified, check, parse_request, reject, snapshot_json};
use crate::engine::ChainAccess;
use crate::ledger::{Claimable, Reject};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::verify::{SignedVoucher, VoucherSigner};
use crate::wire::{BatchPayload, ChannelConfigWire, SettleResponse, decimal_u128};

fn failed(f: &Facilitator, refused: Reject) -> Json<SettleResponse> {
    Json(SettleResponse {
        success: false,
        error_reason: Some(refused.reason.as_str().into()),
        error_message: Some(refused.message().chars().take(300).collect()),
        payer: None,
        transaction: String::new(),
        network: f.network(),
        amount: None,
        extra: None,
        extensions: None,
    })
}

/// A successful settle answer; `after` (a deposit or refund) gives the payer and the
/// channel's state after the transaction.
fn settled(
    f: &Facilitator,
    transaction: String,
    amount: String,
    after: Option<Verified>,
) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: after.as_ref().map(|v| v.config.payer.to_checksum(None)),
        transaction,
        network: f.network(),
        amount: Some(amount),
        extra: after
            .as_ref()
            .and_then(|v| serde_json::from_value(json!({ "channelState": snapshot_json(v) })).ok()),
        extensions: None,
    }
}

/// `claims[]` row of a server-authored claim payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimRow {
    voucher: ClaimVoucher,
    signature: Bytes,
    #[serde(with = "decimal_u128")]
    total_claimed: u128,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimVoucher {
    channel: ChannelConfigWire,
    #[serde(with = "decimal_u128")]
    max_claimable_amount: u128,
}

#[derive(Deserialize)]
struct SettleAction {
    receiver: Address,
    token: Address,
}

pub(super) async fn settle(
    State(f): State<Facilitator>,
    headers: HeaderMap,
    Json(req): Json<Value>,
) -> (StatusCode, Json<SettleResponse>) {
    let kind = req
        .pointer("/paymentPayload/payload/type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = match kind.as_str() {
        "deposit" => settle_deposit(&f, req).await,
        "claim" => settle_claim(&f, req).await,
        "settle" => settle_sweep(&f, req).await,
        "refund" if f.refund_token.is_some() => {
            if !refund_authorized(&f, &headers) {
                let fault = reject(
                    Reason::UnknownSettleAction,
                    "refund is only offered to the resource server (bearer token)",
                );
                return (StatusCode::UNAUTHORIZED, failed(&f, fault));
            }
            settle_refund(&f, req).await
        }
        other => Err(reject(
            Reason::UnknownSettleAction,
            format!(
                "settle action {:?} is not offered",
                other.chars().take(32).collect::<String>()
            ),
        )),
    };
    match result {
        Ok(r) => (StatusCode::OK, Json(r)),
        Err(fault) => (StatusCode::OK, failed(&f, fault)),
    }
}

/// `Authorization: Bearer <refund token>`, compared in constant time.
fn refund_authorized(f: &Facilitator, headers: &HeaderMap) -> bool {
    let Some(token) = &f.refund_token else {
        return false;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn settle_deposit(f: &Facilitator, req: Value) -> Result<SettleResponse, Reject> {
    let v = check(f, req).await?;
    let BatchPayload::Deposit { deposit, .. } = &v.payload else {
        return Err(reject(Reason::PayloadType, "not a deposit"));
    };
    let auth = deposit
        .authorization
        .erc3009_authorization
        .as_ref()
        .ok_or(reject(
            Reason::Erc3009AuthorizationRequired,
            "ERC-3009 only",
        ))?;
    let out = ChainAccess::deposit(f.escrow.as_ref(), &v.config, deposit.amount, auth)
        .await
        .map_err(|e| reject(e.reason, e.message))?;
    let after = Verified {
        state: out.state,
        ..v
    };
    Ok(settled(
        f,
        out.tx_hash.to_string(),
        out.amount.to_string(),
        Some(after),
    ))
}

async fn settle_claim(f: &Facilitator, req: Value) -> Result<SettleResponse, Reject> {
    let req = parse_request(req)?;
    let claims = req
        .payment_payload
        .payload
        .get("claims")
        .cloned()
        .ok_or(reject(Reason::ClaimPayload, "claims missing"))?;
    let rows: Vec<ClaimRow> =
        serde_json::from_value(claims).map_err(|e| reject(Reason::ClaimPayload, e.to_string()))?;
    if rows.is_empty() {
        return Err(reject(Reason::ClaimPayload, "no claims"));
    }
    let mut claimables = Vec::with_capacity(rows.len());
    for row in rows {
        claimables.push(claimable(f, row).await?);
    }
    let out = f
        .escrow
        .claim(&claimables)
        .await
        .map_err(|e| reject(e.reason(), e.to_string()))?;
    Ok(settled(f, out.tx_hash.to_string(), String::new(), None))
}

/// A claim row whose voucher signature checks out (ECDSA, or ERC-1271 for smart wallets)
/// and whose total stays within its voucher.
async fn claimable(f: &Facilitator, row: ClaimRow) -> Result<Claimable, Reject> {
    let w = row.voucher.channel;
    let config = ChannelConfig {
        payer: w.payer,
        payerAuthorizer: w.payer_authorizer,
        receiver: w.receiver,
        receiverAuthorizer: w.receiver_authorizer,
        token: w.token,
        withdrawDelay: alloy::primitives::aliases::U40::saturating_from(w.withdraw_delay),
        salt: w.salt,
    };
    let id = f.domain.channel_id(&config);
    if row.total_claimed > row.voucher.max_claimable_amount {
        return Err(reject(
            Reason::ChargeExceedsSignedCumulative,
            format!("claim on {id} above its voucher"),
        ));
    }
    SignedVoucher {
        channel_id: id,
        max_claimable: row.voucher.max_claimable_amount,
        signature: row.signature.clone(),
    }
    .verify(&f.domain, VoucherSigner::of(&config), f.escrow.as_ref())
    .await
    .map_err(|e| reject(e.reason(), format!("{id}: {e}")))?;
    Ok(Claimable {
        channel_id: id,
        config,
        max_claimable: row.voucher.max_claimable_amount,
        signature: row.signature,
        claim_total: row.total_claimed,
        onchain_total_claimed: 0,
        withdraw_requested_at: 0,
    })
}

/// The fields the resource server adds to the client's refund payload (the stock SDK's
/// shape: `amount`, `refundNonce`, `claims`, and optional authorizer signatures, which this
/// facilitator does not use: it signs with its own receiver-authorizer key).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefundEnrichment {
    #[serde(default)]
    refund_nonce: Option<Value>,
    #[serde(default)]
    claims: Vec<ClaimRow>,
}

/// `refundNonce` as a decimal string (the SDK's form) or a JSON number.
fn parse_nonce(v: &Value) -> Option<U256> {
    match v {
        Value::String(s) => crate::wire::parse_u256(s),
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
}

/// Cooperative refund: the payer's zero-charge voucher is checked as `/verify` does, the
/// server's `refundNonce` must be the on-chain one (a stale one would revert), the optional
/// claim row (this channel's only) is verified, then `EscrowClient::refund` claims and
/// refunds in one transaction. The amount is capped at what the claim leaves unspent, as the
/// contract would cap it.
async fn settle_refund(f: &Facilitator, req: Value) -> Result<SettleResponse, Reject> {
    let enrichment: RefundEnrichment = serde_json::from_value(
        req.pointer("/paymentPayload/payload")
            .cloned()
            .unwrap_or(Value::Null),
    )
    .map_err(|e| reject(Reason::RefundPayload, format!("refund payload: {e}")))?;
    let v = check(f, req).await?;
    let BatchPayload::Refund { amount, .. } = &v.payload else {
        return Err(reject(Reason::PayloadType, "not a refund"));
    };
    let amount = *amount;
    let id = ChannelId(v.payload.voucher().channel_id);
    let nonce = enrichment
        .refund_nonce
        .as_ref()
        .and_then(parse_nonce)
        .ok_or(reject(
            Reason::RefundPayload,
            "refundNonce missing or not a decimal",
        ))?;
    if nonce != v.state.refund_nonce {
        return Err(reject(
            Reason::RefundSimulationFailed,
            format!(
                "refundNonce {nonce} is not the channel's {}",
                v.state.refund_nonce
            ),
        ));
    }
    if f.escrow.receiver_authorizer() != Some(v.config.receiverAuthorizer) {
        return Err(reject(
            Reason::AuthorizerAddressMismatch,
            "the channel's receiverAuthorizer is not this facilitator's key",
        ));
    }
    let mut rows = enrichment.claims;
    if rows.len() > 1 {
        return Err(reject(
            Reason::RefundPayload,
            "at most one claim (the refunded channel's)",
        ));
    }
    let claim = match rows.pop() {
        Some(row) => {
            let mut c = claimable(f, row).await?;
            if c.channel_id != id {
                return Err(reject(
                    Reason::RefundPayload,
                    "the claim is for another channel",
                ));
            }
            c.onchain_total_claimed = v.state.total_claimed;
            c.withdraw_requested_at = v.state.withdraw_requested_at;
            // At or below the on-chain total the claim is a no-op: leave it out.
            (c.claim_total > v.state.total_claimed).then_some(c)
        }
        None => None,
    };
    let claimed_to = claim
        .as_ref()
        .map_or(v.state.total_claimed, |c| c.claim_total);
    let Some(available) = v.state.balance.checked_sub(claimed_to) else {
        return Err(reject(
            Reason::RefundSimulationFailed,
            "the claim exceeds the channel balance",
        ));
    };
    if available == 0 {
        return Err(reject(
            Reason::RefundNoBalance,
            "nothing unclaimed to refund",
        ));
    }
    let amount = amount.unwrap_or(available).min(available);
    let out = f
        .escrow
        .refund(&v.config, amount, claim.as_ref())
        .await
        .map_err(|e| reject(e.reason(), e.to_string()))?;
    let after = Verified {
        state: out.state,
        ..v
    };
    Ok(settled(
        f,
        out.tx_hash.to_string(),
        out.refunded.to_string(),
        Some(after),
    ))
}

async fn settle_sweep(f: &Facilitator, req: Value) -> Result<SettleResponse, Reject> {
    let req = parse_request(req)?;
    let action: SettleAction = serde_json::from_value(req.payment_payload.payload.clone())
        .map_err(|e| reject(Reason::SettlePayload, e.to_string()))?;
    let out = f
        .escrow
        .settle(action.receiver, action.token)
        .await
        .map_err(|e| reject(e.reason(), e.to_string()))?;
    let transaction = out.tx_hash.map(|h: B256| h.to_string()).unwrap_or_default();
    Ok(settled(f, transaction, out.amount.to_string(), None))
}
