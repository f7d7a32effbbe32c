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
//!
//! This file holds the facilitator, `/supported` and `/verify` with the checks `/settle`
//! shares (`check`); `settle.rs` holds the settle actions. A refusal is a [`Reject`] whose
//! message the caller is told.

mod settle;

use std::sync::Arc;

use alloy_primitives::Address;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chain::escrow::EscrowClient;
use crate::engine::{ChainAccess, EngineConfig, channel_state_wire};
use crate::ledger::{ChannelSnapshot, OnchainState, Reject};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, EscrowDomain};
use crate::verify::{SignedVoucher, VoucherSigner};
use crate::wire::{
    BATCH_SETTLEMENT, BatchPayload, PaymentPayload, PaymentRequirements, SupportedKind,
    SupportedResponse, VerifyResponse, X402_VERSION, encode_header,
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
            .route("/settle", post(settle::settle))
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

/// A refusal of this facilitator: the reason and the message the caller is told.
fn reject(reason: Reason, message: impl Into<String>) -> Reject {
    Reject::explained(reason, None, message)
}

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
        Err(refused) => Json(VerifyResponse {
            is_valid: false,
            invalid_reason: Some(refused.reason.as_str().into()),
            invalid_message: Some(refused.message()),
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

fn parse_request(req: Value) -> Result<FacilitatorRequest, Reject> {
    match req.get("x402Version").and_then(Value::as_u64) {
        Some(X402_VERSION) => {}
        _ => {
            return Err(reject(Reason::InvalidX402Version, "x402Version must be 2"));
        }
    }
    serde_json::from_value(req).map_err(|e| reject(Reason::InvalidPayload, e.to_string()))
}

fn engine_config(r: &PaymentRequirements) -> Result<EngineConfig, Reject> {
    let network = r
        .eip155_network()
        .ok_or(reject(Reason::InvalidNetwork, "not an eip155 network"))?;
    let extra = r
        .batch_extra()
        .map_err(|e| reject(Reason::InvalidPaymentRequirements, format!("extra: {e}")))?;
    let addr = |s: &str, what: &str| {
        s.parse::<Address>().map_err(|_| {
            reject(
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
async fn check(f: &Facilitator, req: Value) -> Result<Verified, Reject> {
    let req = parse_request(req)?;
    let requirements = &req.payment_requirements;
    if requirements.scheme != BATCH_SETTLEMENT {
        return Err(reject(
            Reason::InvalidScheme,
            "requirements are not batch-settlement",
        ));
    }
    if requirements.network != f.network() {
        return Err(reject(
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
        .map_err(|e| reject(e.reason(), e.to_string()))?;
    let state = ChainAccess::channel_state(f.escrow.as_ref(), id)
        .await
        .map_err(|e| reject(e.reason, e.message))?;
    let max = voucher.max_claimable_amount;
    let extra_balance = match &payload {
        BatchPayload::Deposit { deposit, .. } => deposit.amount,
        _ => 0,
    };
    // A pending withdrawal stops new vouchers; a cooperative refund is still welcome (it
    // returns what the withdrawal would).
    if state.withdraw_requested_at != 0 && !matches!(payload, BatchPayload::Refund { .. }) {
        return Err(reject(
            Reason::CumulativeExceedsBalance,
            "a timed withdrawal is pending",
        ));
    }
    match &payload {
        BatchPayload::Refund { .. } => {
            if max < state.total_claimed {
                return Err(reject(
                    Reason::CumulativeBelowClaimed,
                    "below on-chain totalClaimed",
                ));
            }
            if state.balance == 0 {
                return Err(reject(Reason::ChannelNotFound, "no balance on chain"));
            }
        }
        _ => {
            if max > state.balance.saturating_add(extra_balance) {
                return Err(reject(
                    Reason::CumulativeExceedsBalance,
                    "ceiling above balance",
                ));
            }
            if max <= state.total_claimed {
                return Err(reject(
                    Reason::CumulativeBelowClaimed,
                    "ceiling not above totalClaimed",
                ));
            }
            if extra_balance == 0 && state.balance == 0 {
                return Err(reject(Reason::ChannelNotFound, "no balance on chain"));
            }
        }
    }
    Ok(Verified {
        payload,
        config,
        state,
    })
}
