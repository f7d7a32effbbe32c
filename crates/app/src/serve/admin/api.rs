//! The admin API's JSON endpoints. Reads come from the ledger (this instance's cache of
//! every channel), the claim journal, the chain and the bounded history; actions go to the
//! settler running in this process, never around it, so a forced claim, sweep or refund
//! waits for the scheduler's round in progress and never races it.

use std::collections::HashMap;
use std::sync::Arc;

use alloy::providers::Provider;
use alloy_primitives::{Address, B256};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use x402_upto::Ledger;
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::clock::unix_now;
use x402_upto::ledger::ChannelRecord;
use x402_upto::settlement::{RefundError, Settlement};
use x402_upto::store::{BatchState, SettlementStore};
use x402_upto::telemetry;
use x402_upto::typed_data::ChannelId;

use super::SettlerSlot;
use super::blocked::BlockList;
use super::history::{History, Sample, counter_by_label, counter_total};
use super::views::{ChannelView, Withdrawal, amount};

/// Rows a channel page holds at most.
pub const MAX_PAGE: usize = 500;
/// Rows of the "largest unclaimed" and "nearest deadlines" lists.
const TOP: usize = 5;
/// Receipts read per journal request at most (each is one RPC).
const RECEIPTS_PER_CALL: usize = 20;

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState<S: SettlementStore> {
    pub ledger: Ledger,
    pub store: Arc<S>,
    pub escrow: Arc<EscrowClient>,
    pub pay_to: Address,
    pub asset: Address,
    pub asset_name: String,
    pub shared: bool,
    pub settler: SettlerSlot<S>,
    pub blocked: BlockList,
    pub history: Arc<History>,
    pub sample_secs: u64,
    pub decimals: u8,
}

impl<S: SettlementStore> AdminState<S> {
    /// One point of the chart: the chain's receiver totals (the last ones known if the read
    /// fails), the ledger's unclaimed sum, the paid-request counter.
    ///
    /// A claim mined but not yet applied to the ledger would count twice (claimed on chain,
    /// still unclaimed in the ledger): no sample is taken while this instance's settler is
    /// acting on chain (it applies what it mined before it stops), and the chain is read
    /// before and after the ledger, the sample taken again if they differ. Over a shared
    /// store, another instance's claim reaches this cache a refresh later; a point may
    /// then count it twice.
    pub async fn take_sample(&self) {
        for _ in 0..20 {
            match self.settler.get() {
                Some(s) if s.is_acting() => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                _ => break,
            }
        }
        if self.settler.get().is_some_and(|s| s.is_acting()) {
            return;
        }
        let mut sample = None;
        for _ in 0..3 {
            let before = self.escrow.receiver_totals(self.pay_to, self.asset).await;
            let mut unclaimed = 0u128;
            self.ledger
                .visit(|r, _| unclaimed = unclaimed.saturating_add(r.unclaimed()));
            let after = self.escrow.receiver_totals(self.pay_to, self.asset).await;
            match (before, after) {
                (Ok(b), Ok(a)) if a == b => {
                    sample = Some((a, unclaimed));
                    break;
                }
                (Ok(_), Ok(_)) => continue,
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %e, "admin sample: receiver totals unread; keeping the last");
                    let last = self
                        .history
                        .last_sample()
                        .map_or((0, 0), |s| (s.claimed, s.swept));
                    sample = Some((last, unclaimed));
                    break;
                }
            }
        }
        let Some(((claimed, swept), unclaimed)) = sample else {
            return;
        };
        self.history.push_sample(Sample {
            at: unix_now(),
            earned: claimed.saturating_add(unclaimed),
            claimed,
            swept,
            unclaimed,
            paid_requests: counter_total(telemetry::PAID_REQUESTS).unwrap_or(0),
        });
    }

    /// The channel `id` as the API shows it, if the ledger still has it.
    fn view(&self, id: &ChannelId, now: u64) -> Option<ChannelView> {
        let r = self.ledger.record(id)?;
        Some(ChannelView::of(
            &r,
            now,
            self.ledger.is_held(id),
            self.blocked.payers().contains(&r.config.payer),
        ))
    }

    fn views(&self, ids: Vec<ChannelId>) -> Vec<ChannelView> {
        let now = unix_now();
        ids.iter().filter_map(|id| self.view(id, now)).collect()
    }

    /// The running scheduler, or the answer saying why actions go elsewhere.
    fn settler(&self) -> Result<Arc<Settlement<S>>, ApiError> {
        match self.settler.get() {
            Some(s) if s.may_act_now() => Ok(s),
            _ => Err(error(
                StatusCode::CONFLICT,
                "not_settler",
                if self.shared {
                    "this instance does not hold the settler lease: claims, sweeps and refunds \
                     are sent by the settler only. Send the action to the admin API of the \
                     instance whose /api/totals says \"settler\": true"
                } else {
                    "the settler is not running (starting or stopping); try again"
                },
            )),
        }
    }
}

/// A refused admin request, answered as `{"error": code, "message": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

/// The answer of a handler: JSON, or an [`ApiError`].
type Answer = Result<Json<Value>, ApiError>;

pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

pub async fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
}

/// `GET /api/channels?payer=0x…&offset=0&limit=50&sort=unclaimed|last_voucher|deadline|id`
pub async fn channels<S: SettlementStore>(
    State(state): State<Arc<AdminState<S>>>,
    Query(q): Query<HashMap<String, String>>,
) -> Answer {
    let payer = match q.get("payer") {
        None => None,
        Some(p) => Some(p.parse::<Address>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_payer",
                "payer must be an address",
            )
        })?),
    };
    let number = |key: &str, default: usize| match q.get(key) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("{key} must be a non-negative integer"),
            )
        }),
    };
    let offset = number("offset", 0)?;
    let limit = number("limit", 50)?;
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("limit must be in 1..={MAX_PAGE}"),
        ));
    }
    // Over the whole ledger without copying it: a sort key per channel, the first
    // `offset + limit` kept; only the page's records are copied.
    let now = unix_now();
    let key: fn(&ChannelRecord, u64) -> u128 =
        match q.get("sort").map_or("unclaimed", String::as_str) {
            "unclaimed" => |r, _| u128::MAX - r.unclaimed(),
            "last_voucher" => |r, _| u128::MAX - u128::from(r.last_request_at),
            "deadline" => |r, now| {
                Withdrawal::of(r, now)
                    .deadline
                    .map_or(u128::MAX, u128::from)
            },
            "id" => |_, _| 0,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    "sort must be unclaimed, last_voucher, deadline or id",
                ));
            }
        };
    let mut first = Smallest::new(offset.saturating_add(limit));
    let mut total = 0usize;
    state.ledger.visit(|r, _| {
        if payer.is_none_or(|p| r.config.payer == p) {
            total += 1;
            first.offer(key(r, now), r.channel_id);
        }
    });
    let ids: Vec<ChannelId> = first.into_sorted().into_iter().skip(offset).collect();
    let page = state.views(ids);
    Ok(Json(json!({
        "total": total,
        "offset": offset,
        "limit": limit,
        "channels": page,
    })))
}

#[derive(Serialize)]
struct Revenue {
    /// `receivers(payTo, asset).totalClaimed` on chain.
    #[serde(with = "amount")]
    claimed: u128,
    /// `receivers(payTo, asset).totalSettled`: swept to `payTo`.
    #[serde(with = "amount")]
    swept: u128,
    /// Claimed, not yet swept.
    #[serde(with = "amount")]
    unswept: u128,
}

/// `GET /api/totals`
pub async fn totals<S: SettlementStore>(State(state): State<Arc<AdminState<S>>>) -> Answer {
    let now = unix_now();
    let (mut channels, mut withdrawing) = (0usize, 0usize);
    let (mut charged, mut unclaimed, mut balance, mut at_risk) = (0u128, 0u128, 0u128, 0u128);
    let mut largest = Smallest::new(TOP);
    let mut nearest = Smallest::new(TOP);
    state.ledger.visit(|r, _| {
        channels += 1;
        charged = charged.saturating_add(r.charged);
        unclaimed = unclaimed.saturating_add(r.unclaimed());
        balance = balance.saturating_add(r.onchain.balance);
        if r.unclaimed() > 0 {
            largest.offer(u128::MAX - r.unclaimed(), r.channel_id);
        }
        if let Some(deadline) = Withdrawal::of(r, now).deadline {
            withdrawing += 1;
            at_risk = at_risk.saturating_add(r.unclaimed());
            nearest.offer(u128::from(deadline), r.channel_id);
        }
    });
    let largest = state.views(largest.into_sorted());
    let nearest = state.views(nearest.into_sorted());
    let (revenue, chain_error) = match state
        .escrow
        .receiver_totals(state.pay_to, state.asset)
        .await
    {
        Ok((claimed, settled)) => (
            Some(Revenue {
                claimed,
                swept: settled,
                unswept: claimed.saturating_sub(settled),
            }),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Json(json!({
        "at": unix_now(),
        "receiver": state.pay_to,
        "token": state.asset,
        "asset_name": state.asset_name,
        "decimals": state.decimals,
        "revenue": revenue,
        "chain_error": chain_error,
        "channels": channels,
        "balance": balance.to_string(),
        "charged": charged.to_string(),
        "unclaimed": unclaimed.to_string(),
        "withdrawals_pending": withdrawing,
        "unclaimed_at_risk": at_risk.to_string(),
        "largest_unclaimed": largest,
        "nearest_deadlines": nearest,
        "paid_requests": counter_total(telemetry::PAID_REQUESTS),
        "blocked_payers": state.blocked.payers().list().len(),
        "settler": state.settler.get().is_some_and(|s| s.may_act_now()),
        "shared_store": state.shared,
    })))
}

/// `GET /api/journal`: the open claim batches and the transactions mined here.
pub async fn journal<S: SettlementStore + 'static>(
    State(state): State<Arc<AdminState<S>>>,
) -> Answer {
    fill_receipts(&state).await;
    let store = Arc::clone(&state.store);
    let entries = tokio::task::spawn_blocking(move || store.entries())
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("reading the claim journal: {e}"),
            )
        })?;
    let open: Vec<Value> = entries
        .iter()
        .map(|e| {
            let (state_name, block) = match e.state {
                BatchState::Pending => ("pending", None),
                BatchState::Sent => ("sent", None),
                BatchState::Mined(b) => ("mined", Some(b)),
            };
            let amount = e
                .rows
                .iter()
                .map(|r| r.claim_total.saturating_sub(r.onchain_total_claimed))
                .fold(0u128, u128::saturating_add);
            let channels: Vec<Value> = e
                .rows
                .iter()
                .map(|r| json!({ "channel_id": r.channel_id, "claim_total": r.claim_total.to_string() }))
                .collect();
            json!({
                "batch": e.id,
                "state": state_name,
                "block": block,
                "created_at": e.created_at,
                "rows": e.rows.len(),
                "amount": amount.to_string(),
                "tx_hashes": e.tx_hashes,
                "channels": channels,
            })
        })
        .collect();
    Ok(Json(json!({
        "open": open,
        "transactions": state.history.transactions(),
    })))
}

/// Reads the receipts of the transactions still missing their gas price (bounded per call).
async fn fill_receipts<S: SettlementStore>(state: &AdminState<S>) {
    for hash in state
        .history
        .without_receipt()
        .into_iter()
        .take(RECEIPTS_PER_CALL)
    {
        if let Ok(Some(r)) = state.escrow.provider().get_transaction_receipt(hash).await {
            state
                .history
                .set_receipt(hash, r.gas_used, r.effective_gas_price, r.block_number);
        }
    }
}

/// `GET /api/activity`: what the dashboard draws over time.
pub async fn activity<S: SettlementStore>(State(state): State<Arc<AdminState<S>>>) -> Answer {
    fill_receipts(&state).await;
    let text = crate::telemetry::prometheus_handle().map(|h| h.render());
    let mut rejections = text
        .as_deref()
        .map(|t| counter_by_label(t, telemetry::PAYMENTS_REJECTED, "reason"))
        .unwrap_or_default();
    rejections.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rejections: Vec<Value> = rejections
        .iter()
        .map(|(reason, count)| json!({ "reason": reason, "count": count }))
        .collect();
    let claims: Vec<_> = state
        .history
        .transactions()
        .into_iter()
        .filter(|t| t.kind == "claim")
        .collect();
    let paid: Option<u64> = text.as_deref().map(|t| {
        counter_by_label(t, telemetry::PAID_REQUESTS, "")
            .into_iter()
            .map(|(_, v)| v)
            .sum()
    });
    Ok(Json(json!({
        "sample_secs": state.sample_secs,
        "samples": state.history.samples(),
        "claims": claims,
        "rejections": rejections,
        "paid_requests": paid,
    })))
}

/// `GET /api/payers/blocked`
pub async fn blocked_list<S: SettlementStore>(State(state): State<Arc<AdminState<S>>>) -> Answer {
    Ok(Json(json!({
        "blocked": state.blocked.payers().list(),
        "kept_in": state.blocked.home(),
    })))
}

/// `POST /api/payers/{payer}/block`
pub async fn block<S: SettlementStore>(
    State(state): State<Arc<AdminState<S>>>,
    Path(payer): Path<String>,
) -> Answer {
    set_blocked(&state, &payer, true).await
}

/// `POST /api/payers/{payer}/unblock`
pub async fn unblock<S: SettlementStore>(
    State(state): State<Arc<AdminState<S>>>,
    Path(payer): Path<String>,
) -> Answer {
    set_blocked(&state, &payer, false).await
}

async fn set_blocked<S: SettlementStore>(
    state: &AdminState<S>,
    payer: &str,
    blocked: bool,
) -> Answer {
    let payer = payer.parse::<Address>().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_payer",
            "payer must be an address",
        )
    })?;
    let changed = state.blocked.set(payer, blocked).await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "block_list_write_failed",
            e,
        )
    })?;
    tracing::warn!(%payer, blocked, changed, "admin: payer block list changed");
    Ok(Json(
        json!({ "payer": payer, "blocked": blocked, "changed": changed }),
    ))
}

/// `POST /api/claim`: a claim round of every channel with an unclaimed charge, now.
pub async fn claim<S: SettlementStore>(State(state): State<Arc<AdminState<S>>>) -> Answer {
    let report = state.settler()?.claim_now().await;
    tracing::info!(?report, "admin: claim now");
    Ok(Json(json!({
        "batches": report.batches,
        "rows": report.rows,
        "claimed": report.claimed.to_string(),
        "gas_used": report.gas_used,
        "failed_rows": report.failed_rows,
        "already_claimed": report.already_claimed,
        "reconciled": report.reconciled,
    })))
}

/// `POST /api/sweep`: sweeps what was claimed to the receiver, now.
pub async fn sweep<S: SettlementStore>(State(state): State<Arc<AdminState<S>>>) -> Answer {
    let swept = state
        .settler()?
        .sweep_now()
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, "chain_error", e.to_string()))?;
    tracing::info!(swept, "admin: sweep now");
    Ok(Json(json!({ "swept": swept.to_string() })))
}

/// `POST /api/channels/{id}/refund`: the channel's remainder back to its payer, now.
pub async fn refund<S: SettlementStore>(
    State(state): State<Arc<AdminState<S>>>,
    Path(id): Path<String>,
) -> Answer {
    let id = id.parse::<B256>().map(ChannelId).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_channel",
            "the channel id must be 32 bytes of hex",
        )
    })?;
    let done = state.settler()?.refund_now(id).await.map_err(|e| {
        let (status, code) = match &e {
            RefundError::UnknownChannel => (StatusCode::NOT_FOUND, "unknown_channel"),
            RefundError::NotOurs | RefundError::NothingToRefund => {
                (StatusCode::UNPROCESSABLE_ENTITY, "not_refundable")
            }
            RefundError::Busy | RefundError::NotNow(_) => (StatusCode::CONFLICT, "busy"),
            RefundError::Chain(_) => (StatusCode::BAD_GATEWAY, "chain_error"),
        };
        error(status, code, e.to_string())
    })?;
    tracing::warn!(channel = %id, refunded = done.amount, claimed = done.claimed, tx = %done.tx_hash, "admin: channel refunded");
    Ok(Json(json!({
        "channel_id": id,
        "refunded": done.amount.to_string(),
        "claimed": done.claimed.to_string(),
        "tx_hash": done.tx_hash,
    })))
}

/// The `cap` smallest `(key, id)` pairs offered, without keeping the others.
struct Smallest {
    cap: usize,
    heap: std::collections::BinaryHeap<(u128, ChannelId)>,
}

impl Smallest {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            heap: std::collections::BinaryHeap::new(),
        }
    }

    fn offer(&mut self, key: u128, id: ChannelId) {
        if self.cap == 0 {
            return;
        }
        if self.heap.len() == self.cap {
            match self.heap.peek() {
                Some(top) if (key, id) < *top => {
                    self.heap.pop();
                }
                _ => return,
            }
        }
        self.heap.push((key, id));
    }

    /// The ids, smallest key first (ties by id).
    fn into_sorted(self) -> Vec<ChannelId> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_keeps_the_first_keys_in_order() {
        let id = |b: u8| ChannelId(B256::repeat_byte(b));
        let mut s = Smallest::new(3);
        for (key, b) in [(5u128, 1u8), (1, 2), (9, 3), (1, 0), (3, 4), (7, 5)] {
            s.offer(key, id(b));
        }
        assert_eq!(s.into_sorted(), vec![id(0), id(2), id(4)]);
        let mut none = Smallest::new(0);
        none.offer(1, id(1));
        assert!(none.into_sorted().is_empty());
    }
}
