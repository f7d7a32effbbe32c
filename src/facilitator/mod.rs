//! Facilitator endpoints for this scheme, so resource servers in other languages can use this
//! engine's chain side: `POST /verify`, `POST /settle`, `GET /supported` (x402 v2 bodies).
//!
//! `/verify` checks a deposit, voucher or refund payload statelessly plus against the channel's
//! on-chain state (a facilitator does not know the server's cumulative charge, so the
//! `charged + amount` rule stays with the resource server) and answers with the on-chain
//! snapshot. `/settle` executes `deposit` (ERC-3009 through the collector), `claim` (one
//! `claimWithSignature`, the batch signed with this facilitator's receiver-authorizer key),
//! `settle` (sweep to the receiver) and `refund` (the server-enriched cooperative refund:
//! the outstanding claim and `refundWithSignature` in one transaction).
//!
//! A refund signed with this facilitator's receiver-authorizer key gives money back to the
//! payer, and only the resource server knows what the payer still owes; so `refund` is only
//! offered with [`Facilitator::with_refund_token`], and each refund request must carry that
//! bearer token (the resource server's credential). Without it the action answers
//! `…_unknown_settle_action`, as it did before refunds existed.

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes, U256};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chain::escrow::EscrowClient;
use crate::engine::{ChainAccess, EngineConfig, channel_state_wire};
use crate::ledger::{ChannelSnapshot, Claimable, OnchainState};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use crate::verify::{SignedVoucher, VoucherSigner};
use crate::wire::{
    BATCH_SETTLEMENT, BatchPayload, ChannelConfigWire, PaymentPayload, PaymentRequirements,
    SettleResponse, SupportedKind, SupportedResponse, VerifyResponse, X402_VERSION, decimal_u128,
    encode_header,
};

/// The facilitator: one escrow deployment, one relayer.
#[derive(Clone, Debug)]
pub struct Facilitator {
    escrow: Arc<EscrowClient>,
    domain: EscrowDomain,
    relayer: Address,
    /// Bearer token a `refund` request must carry; `None`: refunds are not offered.
    refund_token: Option<Arc<str>>,
}

impl Facilitator {
    /// A facilitator sending through `escrow` (whose receiver-authorizer key signs claims).
    pub fn new(escrow: Arc<EscrowClient>, domain: EscrowDomain, relayer: Address) -> Self {
        Self {
            escrow,
            domain,
            relayer,
            refund_token: None,
        }
    }

    /// Offers the `refund` settle action to callers presenting `Authorization: Bearer
    /// <token>` (the resource server). An empty token offers nothing.
    pub fn with_refund_token(mut self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.refund_token = (!token.is_empty()).then(|| Arc::from(token));
        self
    }

    /// The axum router with the three endpoints.
    pub fn router(self) -> Router {
        Router::new()
            .route("/verify", post(verify))
            .route("/settle", post(settle))
            .route("/supported", get(supported))
            .with_state(self)
    }

    fn network(&self) -> String {
        format!("eip155:{}", self.domain.chain_id())
    }
}

/// Body of `/verify` and `/settle`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest {
    /// Must be 2.
    pub x402_version: u64,
    /// The client's (or server's) payload.
    pub payment_payload: PaymentPayload,
    /// The requirements it answers.
    pub payment_requirements: PaymentRequirements,
}

type Fault = (Reason, String);

async fn supported(State(f): State<Facilitator>) -> Json<SupportedResponse> {
    let extra = f
        .escrow
        .receiver_authorizer()
        .map(|a| json!({ "receiverAuthorizer": a.to_checksum(None) }));
    let mut signers = serde_json::Map::new();
    signers.insert("eip155:*".into(), json!([f.relayer.to_checksum(None)]));
    Json(SupportedResponse {
        kinds: vec![SupportedKind {
            x402_version: X402_VERSION,
            scheme: BATCH_SETTLEMENT.into(),
            network: f.network(),
            extra,
        }],
        extensions: Vec::new(),
        signers,
    })
}

async fn verify(State(f): State<Facilitator>, Json(req): Json<Value>) -> Json<VerifyResponse> {
    match check(&f, req).await {
        Ok(v) => Json(VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: Some(v.config.payer.to_checksum(None)),
            extra: Some(snapshot_json(&v)),
        }),
        Err((reason, message)) => Json(VerifyResponse {
            is_valid: false,
            invalid_reason: Some(reason.as_str().into()),
            invalid_message: Some(message),
            payer: None,
            extra: None,
        }),
    }
}

/// A payload that passed every facilitator check.
struct Verified {
    payload: BatchPayload,
    config: ChannelConfig,
    state: OnchainState,
}

fn snapshot_json(v: &Verified) -> Value {
    let id = v.payload.voucher().channel_id;
    let mut wire = channel_state_wire(&ChannelSnapshot {
        channel_id: id.into(),
        balance: v.state.balance,
        total_claimed: v.state.total_claimed,
        withdraw_requested_at: v.state.withdraw_requested_at,
        refund_nonce: v.state.refund_nonce,
        charged: 0,
    });
    wire.charged_cumulative_amount = None;
    serde_json::to_value(wire).unwrap_or(Value::Null)
}

fn parse_request(req: Value) -> Result<FacilitatorRequest, Fault> {
    match req.get("x402Version").and_then(Value::as_u64) {
        Some(X402_VERSION) => {}
        _ => return Err((Reason::InvalidX402Version, "x402Version must be 2".into())),
    }
    serde_json::from_value(req).map_err(|e| (Reason::InvalidPayload, e.to_string()))
}

fn engine_config(r: &PaymentRequirements) -> Result<EngineConfig, Fault> {
    let network = r
        .eip155_network()
        .ok_or((Reason::InvalidNetwork, "not an eip155 network".into()))?;
    let extra = r
        .batch_extra()
        .map_err(|e| (Reason::InvalidPaymentRequirements, format!("extra: {e}")))?;
    let addr = |s: &str, what: &str| {
        s.parse::<Address>().map_err(|_| {
            (
                Reason::InvalidPaymentRequirements,
                format!("{what} is not an address"),
            )
        })
    };
    Ok(EngineConfig {
        network,
        pay_to: addr(&r.pay_to, "payTo")?,
        asset: addr(&r.asset, "asset")?,
        asset_name: extra.name,
        asset_version: extra.version,
        receiver_authorizer: extra.receiver_authorizer,
        withdraw_delay: extra.withdraw_delay,
        max_timeout_seconds: r.max_timeout_seconds,
        extra: Default::default(),
    })
}

/// Stateless checks (shared with the resource server's decoder), the signature, then the
/// on-chain rules.
async fn check(f: &Facilitator, req: Value) -> Result<Verified, Fault> {
    let req = parse_request(req)?;
    let requirements = &req.payment_requirements;
    if requirements.scheme != BATCH_SETTLEMENT {
        return Err((
            Reason::InvalidScheme,
            "requirements are not batch-settlement".into(),
        ));
    }
    if requirements.network != f.network() {
        return Err((
            Reason::NetworkMismatch,
            format!("this facilitator serves {}", f.network()),
        ));
    }
    let cfg = engine_config(requirements)?;
    // The same decoder as the HTTP layer, fed the payload as its header would carry it.
    let header = encode_header(&req.payment_payload);
    let checked =
        crate::engine::decode_for_facilitator(header.as_bytes(), requirements, &cfg, &f.domain)?;
    let (payload, config, id) = checked;
    let voucher = payload.voucher();
    let signed = SignedVoucher {
        channel_id: id,
        max_claimable: voucher.max_claimable_amount,
        signature: voucher.signature.clone(),
    };
    signed
        .verify(&f.domain, VoucherSigner::of(&config), f.escrow.as_ref())
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    let state = ChainAccess::channel_state(f.escrow.as_ref(), id)
        .await
        .map_err(|e| (e.reason, e.message))?;
    let max = voucher.max_claimable_amount;
    let extra_balance = match &payload {
        BatchPayload::Deposit { deposit, .. } => deposit.amount,
        _ => 0,
    };
    // A pending withdrawal stops new vouchers; a cooperative refund is still welcome (it
    // returns what the withdrawal would).
    if state.withdraw_requested_at != 0 && !matches!(payload, BatchPayload::Refund { .. }) {
        return Err((
            Reason::CumulativeExceedsBalance,
            "a timed withdrawal is pending".into(),
        ));
    }
    match &payload {
        BatchPayload::Refund { .. } => {
            if max < state.total_claimed {
                return Err((
                    Reason::CumulativeBelowClaimed,
                    "below on-chain totalClaimed".into(),
                ));
            }
            if state.balance == 0 {
                return Err((Reason::ChannelNotFound, "no balance on chain".into()));
            }
        }
        _ => {
            if max > state.balance.saturating_add(extra_balance) {
                return Err((
                    Reason::CumulativeExceedsBalance,
                    "ceiling above balance".into(),
                ));
            }
            if max <= state.total_claimed {
                return Err((
                    Reason::CumulativeBelowClaimed,
                    "ceiling not above totalClaimed".into(),
                ));
            }
            if extra_balance == 0 && state.balance == 0 {
                return Err((Reason::ChannelNotFound, "no balance on chain".into()));
            }
        }
    }
    Ok(Verified {
        payload,
        config,
        state,
    })
}

fn failed(f: &Facilitator, (reason, message): Fault) -> Json<SettleResponse> {
    Json(SettleResponse {
        success: false,
        error_reason: Some(reason.as_str().into()),
        error_message: Some(message.chars().take(300).collect()),
        payer: None,
        transaction: String::new(),
        network: f.network(),
        amount: None,
        extra: None,
        extensions: None,
    })
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

async fn settle(
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
                let fault = (
                    Reason::UnknownSettleAction,
                    "refund is only offered to the resource server (bearer token)".into(),
                );
                return (StatusCode::UNAUTHORIZED, failed(&f, fault));
            }
            settle_refund(&f, req).await
        }
        other => Err((
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

async fn settle_deposit(f: &Facilitator, req: Value) -> Result<SettleResponse, Fault> {
    let v = check(f, req).await?;
    let BatchPayload::Deposit { deposit, .. } = &v.payload else {
        return Err((Reason::PayloadType, "not a deposit".into()));
    };
    let auth = deposit
        .authorization
        .erc3009_authorization
        .as_ref()
        .ok_or((Reason::Erc3009AuthorizationRequired, "ERC-3009 only".into()))?;
    let out = ChainAccess::deposit(f.escrow.as_ref(), &v.config, deposit.amount, auth)
        .await
        .map_err(|e| (e.reason, e.message))?;
    let after = Verified {
        state: out.state,
        ..v
    };
    Ok(SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(after.config.payer.to_checksum(None)),
        transaction: out.tx_hash.to_string(),
        network: f.network(),
        amount: Some(out.amount.to_string()),
        extra: serde_json::from_value(json!({ "channelState": snapshot_json(&after) })).ok(),
        extensions: None,
    })
}

async fn settle_claim(f: &Facilitator, req: Value) -> Result<SettleResponse, Fault> {
    let req = parse_request(req)?;
    let claims = req
        .payment_payload
        .payload
        .get("claims")
        .cloned()
        .ok_or((Reason::ClaimPayload, "claims missing".into()))?;
    let rows: Vec<ClaimRow> =
        serde_json::from_value(claims).map_err(|e| (Reason::ClaimPayload, e.to_string()))?;
    if rows.is_empty() {
        return Err((Reason::ClaimPayload, "no claims".into()));
    }
    let mut claimables = Vec::with_capacity(rows.len());
    for row in rows {
        claimables.push(claimable(f, row).await?);
    }
    let out = f
        .escrow
        .claim(&claimables)
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    Ok(SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: None,
        transaction: out.tx_hash.to_string(),
        network: f.network(),
        amount: Some(String::new()),
        extra: None,
        extensions: None,
    })
}

/// A claim row whose voucher signature checks out (ECDSA, or ERC-1271 for smart wallets)
/// and whose total stays within its voucher.
async fn claimable(f: &Facilitator, row: ClaimRow) -> Result<Claimable, Fault> {
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
        return Err((
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
    .map_err(|e| (e.reason(), format!("{id}: {e}")))?;
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
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            U256::from_str_radix(s, 10).ok()
        }
        Value::Number(n) => n.as_u64().map(U256::from),
        _ => None,
    }
}

/// Cooperative refund: the payer's zero-charge voucher is checked as `/verify` does, the
/// server's `refundNonce` must be the on-chain one (a stale one would revert), the optional
/// claim row (this channel's only) is verified, then `EscrowClient::refund` claims and
/// refunds in one transaction. The amount is capped at what the claim leaves unspent, as the
/// contract would cap it.
async fn settle_refund(f: &Facilitator, req: Value) -> Result<SettleResponse, Fault> {
    let enrichment: RefundEnrichment = serde_json::from_value(
        req.pointer("/paymentPayload/payload")
            .cloned()
            .unwrap_or(Value::Null),
    )
    .map_err(|e| (Reason::RefundPayload, format!("refund payload: {e}")))?;
    let v = check(f, req).await?;
    let BatchPayload::Refund { amount, .. } = &v.payload else {
        return Err((Reason::PayloadType, "not a refund".into()));
    };
    let amount = *amount;
    let id = ChannelId(v.payload.voucher().channel_id);
    let nonce = enrichment
        .refund_nonce
        .as_ref()
        .and_then(parse_nonce)
        .ok_or((
            Reason::RefundPayload,
            "refundNonce missing or not a decimal".into(),
        ))?;
    if nonce != v.state.refund_nonce {
        return Err((
            Reason::RefundSimulationFailed,
            format!(
                "refundNonce {nonce} is not the channel's {}",
                v.state.refund_nonce
            ),
        ));
    }
    if f.escrow.receiver_authorizer() != Some(v.config.receiverAuthorizer) {
        return Err((
            Reason::AuthorizerAddressMismatch,
            "the channel's receiverAuthorizer is not this facilitator's key".into(),
        ));
    }
    let mut rows = enrichment.claims;
    if rows.len() > 1 {
        return Err((
            Reason::RefundPayload,
            "at most one claim (the refunded channel's)".into(),
        ));
    }
    let claim = match rows.pop() {
        Some(row) => {
            let mut c = claimable(f, row).await?;
            if c.channel_id != id {
                return Err((
                    Reason::RefundPayload,
                    "the claim is for another channel".into(),
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
        return Err((
            Reason::RefundSimulationFailed,
            "the claim exceeds the channel balance".into(),
        ));
    };
    if available == 0 {
        return Err((
            Reason::RefundNoBalance,
            "nothing unclaimed to refund".into(),
        ));
    }
    let amount = amount.unwrap_or(available).min(available);
    let out = f
        .escrow
        .refund(&v.config, amount, claim.as_ref())
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    let after = Verified {
        state: out.state,
        ..v
    };
    Ok(SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(after.config.payer.to_checksum(None)),
        transaction: out.tx_hash.to_string(),
        network: f.network(),
        amount: Some(out.refunded.to_string()),
        extra: serde_json::from_value(json!({ "channelState": snapshot_json(&after) })).ok(),
        extensions: None,
    })
}

async fn settle_sweep(f: &Facilitator, req: Value) -> Result<SettleResponse, Fault> {
    let req = parse_request(req)?;
    let action: SettleAction = serde_json::from_value(req.payment_payload.payload.clone())
        .map_err(|e| (Reason::SettlePayload, e.to_string()))?;
    let out = f
        .escrow
        .settle(action.receiver, action.token)
        .await
        .map_err(|e| (e.reason(), e.to_string()))?;
    Ok(SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: None,
        transaction: out.tx_hash.map(|h: B256| h.to_string()).unwrap_or_default(),
        network: f.network(),
        amount: Some(out.amount.to_string()),
        extra: None,
        extensions: None,
    })
}
