//! Metered streams with mid-stream renewal (`docs/protocol.md` §10).
//!
//! A streamed response keeps its channel held ([`Paid`]) for as long as it runs. The layer
//! names the stream (`X-402-Stream-Id`), wraps the handler's body so that a
//! `payment-renewal` event goes out once most of the budget is used, and settles with a
//! final `payment-response` event when the body ends (or, client gone, when it is dropped).
//! A renewal is a side request to the same route carrying the stream id and the next
//! voucher; it runs [`Engine::renew`] on the held payment, which checkpoints the charge so
//! far durably, and then grows the handler's [`Charge`] budget.
//!
//! The held payment sits behind an async mutex shared by the stream and its renewals, so a
//! renewal and the final settlement never interleave: whichever takes it second sees the
//! other's result (a renewal after the end finds nothing and answers 404).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, BodyDataStream};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use parking_lot::Mutex;
use serde_json::json;

use super::{Charge, PaymentLayer, insert, refund_answer, refusal_response};
use crate::engine::{Engine, Paid, Refusal};
use crate::store::Store;
use crate::typed_data::ChannelId;
use crate::wire::{ResourceInfo, encode_header};

/// Response header naming a metered stream; a renewal request sends it back.
pub const STREAM_ID_HEADER: &str = "x-402-stream-id";
/// SSE event type asking the client to renew its voucher.
pub const RENEWAL_EVENT: &str = "payment-renewal";
/// `error` of the 404 answering a renewal for a stream that is not live on this route
/// (ended, or never existed). Not a spec reason code: nothing about the payment is wrong.
pub const STREAM_NOT_FOUND: &str = "stream_not_found";
/// Default share of the latest increment used before `payment-renewal` goes out.
pub(super) const DEFAULT_RENEW_AT_PERCENT: u8 = 75;

/// The live streams of one layer.
#[derive(Debug, Default)]
pub(super) struct Streams {
    live: Mutex<HashMap<String, Arc<LiveStream>>>,
}

impl Streams {
    fn get(&self, id: &str) -> Option<Arc<LiveStream>> {
        self.live.lock().get(id).cloned()
    }
    fn remove(&self, id: &str) {
        self.live.lock().remove(id);
    }
}

/// One metered stream: its held payment, its meter, and what renewals need.
#[derive(Debug)]
struct LiveStream {
    /// `None` once settled (the stream ended or was dropped).
    paid: tokio::sync::Mutex<Option<Paid>>,
    charge: Charge,
    /// The route's price for this stream: what each renewal adds to the budget.
    increment: u128,
    channel_id: ChannelId,
    /// `chargedCumulativeAmount` before the stream: the voucher ceiling is always
    /// `base + charge.max()` (the budget grows exactly with the accepted vouchers).
    base: u128,
}

/// Wraps a handler's streamed response: names it, meters it, settles it at the end.
pub(super) fn metered<S: Store + 'static>(
    layer: &PaymentLayer<S>,
    paid: Paid,
    charge: Charge,
    response: Response,
) -> Response {
    let id = hex::encode(rand::random::<[u8; 16]>());
    let increment = paid.price();
    let live = Arc::new(LiveStream {
        increment,
        channel_id: paid.channel_id(),
        base: paid.max_claimable().saturating_sub(increment),
        paid: tokio::sync::Mutex::new(Some(paid)),
        charge,
    });
    layer
        .streams
        .live
        .lock()
        .insert(id.clone(), Arc::clone(&live));
    // The renewal event goes out when at most `slack` of the budget is left.
    let slack = increment.saturating_mul(u128::from(100 - layer.renew_at_percent)) / 100;
    let (mut parts, body) = response.into_parts();
    if let Ok(v) = HeaderValue::from_str(&id) {
        parts.headers.insert(STREAM_ID_HEADER, v);
    }
    let meter = Meter {
        body: body.into_data_stream(),
        live: Arc::clone(&live),
        id: id.clone(),
        slack,
        announced: 0,
        ended: false,
    };
    let settlement = StreamSettlement {
        engine: layer.engine.clone(),
        streams: Arc::clone(&layer.streams),
        id,
        live,
        done: false,
    };
    let tail = futures_util::stream::once(async move { Ok(settlement.finish().await) });
    Response::from_parts(parts, Body::from_stream(meter.chain(tail)))
}

/// The handler's body, with a `payment-renewal` event inserted (between the handler's
/// chunks, which must therefore be whole SSE events) once per budget when it runs low.
struct Meter {
    body: BodyDataStream,
    live: Arc<LiveStream>,
    id: String,
    slack: u128,
    /// The budget (`charge.max()`) a renewal event was last sent for.
    announced: u128,
    ended: bool,
}

impl Meter {
    fn renewal_due(&mut self) -> Option<Bytes> {
        let live = &self.live;
        let budget = live.charge.max();
        let charged = live.charge.get().unwrap_or(0);
        if budget <= self.announced || charged.saturating_add(self.slack) < budget {
            return None;
        }
        self.announced = budget;
        let data = json!({
            "streamId": self.id,
            "channelId": live.channel_id.0,
            "maxClaimableAmount": live.base.saturating_add(budget).to_string(),
            "chargedCumulativeAmount": live.base.saturating_add(charged).to_string(),
            "chargedAmount": charged.to_string(),
            "amount": live.increment.to_string(),
        });
        Some(Bytes::from(format!(
            "event: {RENEWAL_EVENT}\ndata: {data}\n\n"
        )))
    }
}

impl Stream for Meter {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        // Registered first: a charge moved by another task wakes us to send the event.
        this.live.charge.inner.waker.register(cx.waker());
        if let Some(event) = this.renewal_due() {
            return Poll::Ready(Some(Ok(event)));
        }
        match this.body.poll_next_unpin(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

/// Settles a streamed payment exactly once: at the end of the stream, or (client gone) when
/// the stream is dropped, charging what was delivered. Checkpoints made by renewals are
/// already durable; the final commit adds what was delivered since.
struct StreamSettlement<S: Store + 'static> {
    engine: Engine<S>,
    streams: Arc<Streams>,
    id: String,
    live: Arc<LiveStream>,
    done: bool,
}

/// Takes the held payment (waiting for a renewal in flight) and commits the stream's charge.
async fn settle_stream<S: Store + 'static>(
    engine: Engine<S>,
    live: Arc<LiveStream>,
) -> Option<Result<crate::wire::SettleResponse, Refusal>> {
    let paid = live.paid.lock().await.take()?;
    // Untouched by the handler: the whole authorized budget, as for any route.
    let actual = live.charge.get().unwrap_or_else(|| live.charge.max());
    let settled = engine.settle(paid, actual).await;
    if let Ok(done) = &settled {
        super::record_settled(done);
    }
    Some(settled)
}

impl<S: Store + 'static> StreamSettlement<S> {
    /// The final SSE event carrying the payment result.
    async fn finish(mut self) -> Bytes {
        self.done = true;
        // New renewals now get 404; one already in flight completes first (the lock).
        self.streams.remove(&self.id);
        // Spawned so that a client leaving during the commit cannot cancel it half-way.
        let task = tokio::spawn(settle_stream(self.engine.clone(), Arc::clone(&self.live)));
        let event = match task.await {
            Ok(Some(Ok(settled))) => format!(
                "event: payment-response\ndata: {}\n\n",
                encode_header(&settled)
            ),
            Ok(Some(Err(refusal))) => {
                let failed = refusal
                    .response
                    .as_ref()
                    .map(encode_header)
                    .unwrap_or_default();
                format!("event: payment-error\ndata: {failed}\n\n")
            }
            Ok(None) => String::new(),
            Err(e) => {
                tracing::error!(error = %e, "the stream settlement task failed");
                String::new()
            }
        };
        Bytes::from(event)
    }
}

impl<S: Store + 'static> Drop for StreamSettlement<S> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.streams.remove(&self.id);
        let engine = self.engine.clone();
        let live = Arc::clone(&self.live);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(Err(e)) = settle_stream(engine, live).await {
                    tracing::warn!(error = %e, "settling an interrupted stream failed");
                }
            });
        }
        // Without a runtime the held payment is dropped with the stream: the channel is
        // released with only its durable checkpoints charged.
    }
}

/// Answers a renewal request (`X-402-Stream-Id` + `PAYMENT-SIGNATURE`) for this layer.
pub(super) async fn renew<S: Store + 'static>(
    layer: &PaymentLayer<S>,
    id: &[u8],
    header: Option<&[u8]>,
    resource: &ResourceInfo,
) -> Response {
    let Some(live) = std::str::from_utf8(id)
        .ok()
        .and_then(|id| layer.streams.get(id))
    else {
        return not_found();
    };
    let Some(header) = header else {
        let required = layer
            .engine
            .payment_required(resource, live.increment, None);
        return refusal_response(&Refusal {
            status: StatusCode::PAYMENT_REQUIRED,
            reason: None,
            message: "a stream renewal requires payment".into(),
            required: Some(required),
            response: None,
        });
    };
    let engine = layer.engine.clone();
    let header = header.to_vec();
    let resource = resource.clone();
    // Spawned so that a client leaving mid-renewal cannot cancel the checkpoint between its
    // durable write and its application in memory.
    let task = tokio::spawn(async move {
        let mut held = live.paid.lock().await;
        let paid = held.as_mut()?;
        let charged = live.charge.get().unwrap_or(0);
        let result = engine
            .renew(paid, &header, live.increment, charged, &resource)
            .await;
        if result.is_ok() {
            // Only after the reservation grew, so the meter never exceeds what is held.
            live.charge.extend(live.increment);
        }
        Some(result)
    });
    match task.await {
        Ok(Some(Ok(settled))) => refund_answer(&settled),
        Ok(Some(Err(refusal))) => refusal_response(&refusal),
        Ok(None) => not_found(),
        Err(e) => {
            tracing::error!(error = %e, "a stream renewal task failed");
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

fn not_found() -> Response {
    let body = json!({
        "error": STREAM_NOT_FOUND,
        "message": "no live metered stream with this id on this route (it ended or never existed)",
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::NOT_FOUND;
    insert(&mut response, CONTENT_TYPE.as_str(), "application/json");
    insert(&mut response, CACHE_CONTROL.as_str(), "no-store");
    response
}
