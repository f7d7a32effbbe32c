//! Facilitator endpoints for this scheme, so resource servers in other languages can use this
//! engine's chain side: `POST /verify`, `POST /settle`, `GET /supported` (x402 v2 bodies).
//!
//! `/verify` checks a deposit, voucher or refund payload statelessly plus against the channel's
//! on-chain state (a facilitator does not know the server's cumulative charge, so the
//! `charged + amount` rule stays with the resource server) and answers with the on-chain
//! snapshot. `/settle` executes `deposit` (ERC-3009 through the collector), `claim` (one
//! `claimWithSignature`, the batch signed with this facilitator's receiver-authorizer key) and
//! `settle` (sweep to the receiver). Cooperative `refund` through `/settle` is not offered: it
//! answers `…_unknown_settle_action` (resource servers built on [`crate::engine`] refund
//! themselves).

use std::sync::Arc;

use alloy_primitives::{Address, B256, Bytes};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chain::escrow::EscrowClient;
use crate::engine::{ChainAccess, EngineConfig, channel_state_wire};
use crate::ledger::{ChannelSnapshot, Claimable, OnchainState};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, EscrowDomain};
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
}

impl Facilitator {
    /// A facilitator sending through `escrow` (whose receiver-authorizer key signs claims).
    pub fn new(escrow: Arc<EscrowClient>, domain: EscrowDomain, relayer: Address) -> Self {
        Self {
            escrow,
            domain,
            relayer,
        }
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
    if state.withdraw_requested_at != 0 {
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

async fn settle(State(f): State<Facilitator>, Json(req): Json<Value>) -> Json<SettleResponse> {
    let kind = req
        .pointer("/paymentPayload/payload/type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let result = match kind.as_str() {
        "deposit" => settle_deposit(&f, req).await,
        "claim" => settle_claim(&f, req).await,
        "settle" => settle_sweep(&f, req).await,
        other => Err((
            Reason::UnknownSettleAction,
            format!(
                "settle action {:?} is not offered",
                other.chars().take(32).collect::<String>()
            ),
        )),
    };
    match result {
        Ok(r) => Json(r),
        Err(fault) => failed(&f, fault),
    }
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
        claimables.push(Claimable {
            channel_id: id,
            config,
            max_claimable: row.voucher.max_claimable_amount,
            signature: row.signature,
            claim_total: row.total_claimed,
            onchain_total_claimed: 0,
            withdraw_requested_at: 0,
        });
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
