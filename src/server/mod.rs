//! The axum/tower layer: a thin [`Service`] over [`Engine`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use axum::{Router, routing::get, Extension};
//! # use x402_upto::server::{Charge, PaymentLayer};
//! # fn demo(engine: x402_upto::engine::Engine<x402_upto::SledStore>) -> Router {
//! async fn handler(Extension(charge): Extension<Charge>) -> &'static str {
//!     charge.set(charge.max() / 2); // this request cost half its maximum
//!     "ok"
//! }
//! Router::new().route("/paid", get(handler).layer(PaymentLayer::fixed(engine, 1000)))
//! # }
//! ```
//!
//! **Charging.** The route's price is the maximum a request may cost (the voucher pays for it).
//! The handler reports the actual cost with the [`Charge`] request extension, or by putting an
//! [`ActualCharge`] into the response extensions. If it reports nothing, the full price is
//! charged. A response with status ≥ 400 charges nothing and gets no `PAYMENT-RESPONSE`. A
//! charge above the maximum is refused: 500, `…_charge_exceeds_signed_cumulative`, nothing
//! charged, the handler's body is not sent. The response leaves only after the voucher is
//! durable in the store.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

mod stream;

pub use stream::{RENEWAL_EVENT, STREAM_ID_HEADER, STREAM_NOT_FOUND};

use crate::engine::{Authorized, BoxFuture, Engine, Refusal};
use crate::reason::Reason;
use crate::store::Store;
use crate::telemetry;
use crate::wire::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, ResourceInfo, SettleResponse,
    encode_header, settle_header,
};

/// The handle a handler uses to report what the request actually cost.
///
/// On a metered stream ([`PaymentLayer::streaming`]) the budget [`Charge::max`] grows each
/// time the client renews its voucher mid-stream; [`Charge::add_wait`] lets a handler pause
/// for that renewal instead of stopping at once.
#[derive(Clone, Debug)]
pub struct Charge {
    inner: Arc<ChargeInner>,
}

#[derive(Debug)]
struct ChargeInner {
    state: Mutex<ChargeState>,
    /// Woken when the budget grows (renewal), for [`Charge::add_wait`].
    extended: tokio::sync::Notify,
    /// The metered body's task, woken when the charge moves so that a renewal event can be
    /// sent even while the handler produces no output.
    waker: futures_util::task::AtomicWaker,
}

#[derive(Clone, Copy, Debug)]
struct ChargeState {
    max: u128,
    actual: Option<u128>,
}

impl Charge {
    pub(crate) fn new(max: u128) -> Self {
        Self {
            inner: Arc::new(ChargeInner {
                state: Mutex::new(ChargeState { max, actual: None }),
                extended: tokio::sync::Notify::new(),
                waker: futures_util::task::AtomicWaker::new(),
            }),
        }
    }
    /// The most this request may cost (the route's price for it; on a renewed stream, the
    /// sum of the renewed increments).
    pub fn max(&self) -> u128 {
        self.inner.state.lock().max
    }
    /// Sets the actual charge; the last call wins. Above [`Charge::max`] the payment fails.
    pub fn set(&self, amount: u128) {
        self.inner.state.lock().actual = Some(amount);
        self.inner.waker.wake();
    }
    /// The charge reported so far.
    pub fn get(&self) -> Option<u128> {
        self.inner.state.lock().actual
    }
    /// Adds `amount` to the charge if the total stays within [`Charge::max`]; `false` (and no
    /// change) when it would not. A metered stream stops when this returns `false`.
    pub fn add(&self, amount: u128) -> bool {
        let mut state = self.inner.state.lock();
        let next = state.actual.unwrap_or(0).saturating_add(amount);
        if next > state.max {
            return false;
        }
        state.actual = Some(next);
        drop(state);
        self.inner.waker.wake();
        true
    }
    /// Like [`Charge::add`], but if the budget is used up, waits up to `grace` for the client
    /// to renew its voucher (a metered stream's renewal extends [`Charge::max`]). `false`
    /// when no renewal came in time: the handler then ends the stream.
    pub async fn add_wait(&self, amount: u128, grace: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let extended = self.inner.extended.notified();
            tokio::pin!(extended);
            // Registered before the check, so a renewal landing in between is not missed.
            extended.as_mut().enable();
            if self.add(amount) {
                return true;
            }
            if tokio::time::timeout_at(deadline, extended).await.is_err() {
                return false;
            }
        }
    }
    /// What is left of the maximum.
    pub fn remaining(&self) -> u128 {
        let state = self.inner.state.lock();
        state.max.saturating_sub(state.actual.unwrap_or(0))
    }
    /// Grows the budget after an accepted renewal and wakes whoever waits for it.
    fn extend(&self, by: u128) {
        let mut state = self.inner.state.lock();
        state.max = state.max.saturating_add(by);
        drop(state);
        self.inner.extended.notify_waiters();
        self.inner.waker.wake();
    }
}

/// Response extension alternative to [`Charge::set`] (the request extension wins if both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActualCharge(pub u128);

/// Computes a request's maximum price.
pub type PriceFn = Arc<dyn Fn(&Request<Body>) -> u128 + Send + Sync>;

/// A route's price: fixed, or computed from the request.
#[derive(Clone)]
pub enum Price {
    /// The same maximum for every request.
    Fixed(u128),
    /// A maximum computed from the request (method, path, query, headers).
    Dynamic(PriceFn),
}

impl Price {
    fn of(&self, req: &Request<Body>) -> u128 {
        match self {
            Self::Fixed(p) => *p,
            Self::Dynamic(f) => f(req),
        }
    }
}

impl fmt::Debug for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(p) => write!(f, "Fixed({p})"),
            Self::Dynamic(_) => f.write_str("Dynamic(..)"),
        }
    }
}

/// Per-route payment layer.
#[derive(Debug)]
pub struct PaymentLayer<S> {
    engine: Engine<S>,
    price: Price,
    description: Option<String>,
    mime_type: Option<String>,
    base_url: Option<String>,
    streaming: bool,
    /// Share of a stream's latest increment used before `payment-renewal` is sent.
    renew_at_percent: u8,
    /// Live metered streams of this layer, by stream id (shared by every clone).
    streams: Arc<stream::Streams>,
}

impl<S> Clone for PaymentLayer<S> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            price: self.price.clone(),
            description: self.description.clone(),
            mime_type: self.mime_type.clone(),
            base_url: self.base_url.clone(),
            streaming: self.streaming,
            renew_at_percent: self.renew_at_percent,
            streams: Arc::clone(&self.streams),
        }
    }
}

impl<S: Store + 'static> PaymentLayer<S> {
    /// A layer charging up to `price` atomic units per request.
    pub fn fixed(engine: Engine<S>, price: u128) -> Self {
        Self::new(engine, Price::Fixed(price))
    }

    /// A layer with a fixed or request-dependent price.
    pub fn new(engine: Engine<S>, price: Price) -> Self {
        Self {
            engine,
            price,
            description: None,
            mime_type: None,
            base_url: None,
            streaming: false,
            renew_at_percent: stream::DEFAULT_RENEW_AT_PERCENT,
            streams: Arc::default(),
        }
    }

    /// Metered Server-Sent Events: the handler streams and charges as it goes with
    /// [`Charge::add`] (stopping when it returns `false`) or [`Charge::add_wait`]. The
    /// response carries an `X-402-Stream-Id` header; once most of the authorized budget is
    /// used the layer sends `event: payment-renewal`, and a request to the same route with
    /// that header and the next voucher in `PAYMENT-SIGNATURE` extends the budget mid-stream
    /// (checkpointed durably). The payment is settled when the stream ends, and its
    /// `PAYMENT-RESPONSE` is sent as a final `event: payment-response` whose data is the
    /// base64 header value. See `docs/protocol.md`, "Streaming".
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Sends `payment-renewal` once `percent` of the stream's latest increment is charged
    /// (default 75; clamped to 1..=100).
    pub fn renew_at_percent(mut self, percent: u8) -> Self {
        self.renew_at_percent = percent.clamp(1, 100);
        self
    }

    /// `resource.description` of the offer.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// `resource.mimeType` of the offer.
    pub fn with_mime_type(mut self, m: impl Into<String>) -> Self {
        self.mime_type = Some(m.into());
        self
    }

    /// Public origin (`https://api.example.com`) for `resource.url`; default `http://<Host>`.
    pub fn with_base_url(mut self, base: impl Into<String>) -> Self {
        self.base_url = Some(base.into());
        self
    }
}

impl<S, I> Layer<I> for PaymentLayer<S> {
    type Service = PaymentService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        PaymentService {
            layer: Arc::new(self.clone()),
            inner,
        }
    }
}

/// The service [`PaymentLayer`] produces.
#[derive(Debug)]
pub struct PaymentService<S, I> {
    layer: Arc<PaymentLayer<S>>,
    inner: I,
}

impl<S, I: Clone> Clone for PaymentService<S, I> {
    fn clone(&self) -> Self {
        Self {
            layer: Arc::clone(&self.layer),
            inner: self.inner.clone(),
        }
    }
}

impl<S, I> Service<Request<Body>> for PaymentService<S, I>
where
    S: Store + 'static,
    I: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service is driven with `oneshot` on a clone, which polls readiness itself.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = Arc::clone(&self.layer);
        if !req.headers().contains_key(PAYMENT_SIGNATURE) {
            // Nothing to pay with: the 402 is built here, nothing to protect from a hang-up.
            return Box::pin(async move { Ok(handle(&layer, inner, req).await) });
        }
        // A paid request finishes even if the client hangs up: a deposit already sent is
        // still credited and upstream work already started is still charged (durably).
        Box::pin(FinishOnDrop {
            request: Some(Box::pin(async move { handle(&layer, inner, req).await })),
        })
    }
}

/// A paid request, polled in the connection's own task (no task and no cross-task wake-up
/// per request) and, if the connection drops it unfinished (the client hung up), handed to
/// the runtime to run to the end. A panic in it is answered 500, as a failed task was.
struct FinishOnDrop {
    request: Option<BoxFuture<'static, Response>>,
}

impl Future for FinishOnDrop {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(request) = self.request.as_mut() else {
            // Polled after it answered: a caller bug, not a request.
            return Poll::Ready(Ok(internal_error()));
        };
        match std::panic::catch_unwind(AssertUnwindSafe(|| request.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(response)) => {
                self.request = None;
                Poll::Ready(Ok(response))
            }
            Err(_) => {
                self.request = None;
                tracing::error!("a paid request panicked");
                Poll::Ready(Ok(internal_error()))
            }
        }
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        // The runtime is looked up here, on a hang-up, not per request: a handle kept in
        // every request was an `Arc` clone that both workers contended for
        // (docs/benchmarks.md). A connection is dropped on a runtime thread; without one
        // (the runtime shutting down) the request ends here.
        if let Some(request) = self.request.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = request.await;
            });
        }
    }
}

fn internal_error() -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r
}

async fn handle<S, I>(layer: &PaymentLayer<S>, inner: I, mut req: Request<Body>) -> Response
where
    S: Store + 'static,
    I: Service<Request<Body>, Response = Response, Error = Infallible> + Send,
    I::Future: Send,
{
    let price = layer.price.of(&req);
    let mut headers = req.headers().get_all(PAYMENT_SIGNATURE).iter();
    // A clone shares the request's bytes (no copy): the header must outlive the request,
    // which goes to the handler.
    let header = headers.next().cloned();
    let header = header.as_ref().map(HeaderValue::as_bytes);
    if headers.next().is_some() {
        // Which one would we charge? Neither: a client sends one payment per request.
        let refusal = layer.engine.refusal(
            &resource_info(layer, req.uri(), req.headers()),
            price,
            Reason::InvalidPayload,
            "more than one PAYMENT-SIGNATURE header".into(),
        );
        metrics::counter!(telemetry::PAYMENTS_REJECTED, "reason" => Reason::InvalidPayload.as_str())
            .increment(1);
        return refusal_response(&refusal);
    }
    if layer.streaming
        && let Some(id) = req.headers().get(STREAM_ID_HEADER)
    {
        // A renewal of a live stream of this route: no handler runs.
        let resource = resource_info(layer, req.uri(), req.headers());
        return stream::renew(layer, id.as_bytes(), header, &resource).await;
    }
    let started = std::time::Instant::now();
    // Borrowed apart from the request: the body is not `Sync`, and the closure is held
    // across the engine's awaits.
    let (uri, headers) = (req.uri(), req.headers());
    let authorized = layer
        .engine
        .authorize_with(header, price, || resource_info(layer, uri, headers))
        .await;
    let paid = match authorized {
        Err(refusal) => {
            if let Some(reason) = refusal.reason {
                metrics::counter!(telemetry::PAYMENTS_REJECTED, "reason" => reason.as_str())
                    .increment(1);
            }
            return refusal_response(&refusal);
        }
        Ok(Authorized::Refunded(settled)) => {
            metrics::counter!(telemetry::PAYMENTS_ACCEPTED, "kind" => "refund").increment(1);
            return refund_answer(&settled);
        }
        Ok(Authorized::Paid(paid)) => paid,
    };
    metrics::counter!(telemetry::PAYMENTS_ACCEPTED, "kind" => paid.kind()).increment(1);
    // Payment overhead excludes the handler: time to authorize, then time to settle.
    let authorizing = started.elapsed();
    let charge = Charge::new(price);
    req.extensions_mut().insert(charge.clone());
    let Ok(mut response) = inner.oneshot(req).await;
    if response.status().as_u16() >= 400 {
        // The handler failed: charge nothing. A deposit that came with the request is on
        // chain already; the client must learn of it, or it would sign a second deposit on
        // its next request. So the failure carries a receipt: the deposit, charged 0.
        if let Some(receipt) = layer.engine.release_unserved(paid).await {
            insert(&mut response, PAYMENT_RESPONSE, &encode_header(&receipt));
        }
        return response;
    }
    if layer.streaming {
        return stream::metered(layer, paid, charge, response);
    }
    let actual = charge
        .get()
        .or_else(|| response.extensions().get::<ActualCharge>().map(|c| c.0))
        .unwrap_or(price);
    let settling = std::time::Instant::now();
    match layer.engine.settle(paid, actual).await {
        Ok(settled) => {
            metrics::histogram!(telemetry::PAYMENT_OVERHEAD)
                .record((authorizing + settling.elapsed()).as_secs_f64());
            record_settled(&settled);
            insert(&mut response, PAYMENT_RESPONSE, &settle_header(&settled));
            response
        }
        Err(refusal) => {
            if let Some(reason) = refusal.reason {
                metrics::counter!(telemetry::PAYMENTS_REJECTED, "reason" => reason.as_str())
                    .increment(1);
            }
            refusal_response(&refusal)
        }
    }
}

/// Counts a paid request whose charge is durable, and what it was charged.
pub(crate) fn record_settled(settled: &SettleResponse) {
    metrics::counter!(telemetry::PAID_REQUESTS).increment(1);
    let charged = settled
        .extra
        .as_ref()
        .and_then(|e| e.charged_amount)
        .unwrap_or(0);
    metrics::counter!(telemetry::CHARGED).increment(u64::try_from(charged).unwrap_or(u64::MAX));
}

/// Longest `Host` put into `resource.url` (a DNS name is at most 253 bytes; an IPv6
/// literal with a port fits too).
const MAX_HOST_BYTES: usize = 261;

/// Whether a `Host` value may be reflected into `resource.url`: non-empty, bounded, and made
/// of `host[:port]` characters only. The client chooses it, so anything else is not echoed.
pub fn is_reflectable_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST_BYTES
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The resource of a request (its URI and headers: they are `Sync`, the body is not), as
/// its 402 offer describes it.
fn resource_info<S>(layer: &PaymentLayer<S>, uri: &Uri, headers: &HeaderMap) -> ResourceInfo {
    ResourceInfo {
        url: resource_url(layer, uri, headers),
        description: layer.description.clone(),
        mime_type: layer.mime_type.clone(),
    }
}

fn resource_url<S>(layer: &PaymentLayer<S>, uri: &Uri, headers: &HeaderMap) -> String {
    let path = uri.path();
    match &layer.base_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            // The Host is the client's to choose: only a bounded `host[:port]` is reflected
            // into the offer, anything else becomes `localhost`.
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| uri.authority().map(|a| a.as_str()))
                .filter(|h| is_reflectable_host(h))
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

pub(crate) fn insert(response: &mut Response, name: &'static str, value: &str) {
    // Base64 and our own ASCII strings are always valid header values.
    if let Ok(v) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, v);
    }
}

/// The HTTP answer to a refusal: 402 with `PAYMENT-REQUIRED`, or 500 with a failed
/// `PAYMENT-RESPONSE`; the JSON body says the same for humans.
pub fn refusal_response(refusal: &Refusal) -> Response {
    let mut body = match &refusal.required {
        Some(required) => serde_json::to_value(required).unwrap_or(Value::Null),
        None => json!({ "error": refusal.code() }),
    };
    if let Value::Object(map) = &mut body {
        map.insert("message".into(), Value::String(refusal.message.clone()));
    }
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = refusal.status;
    insert(&mut response, CONTENT_TYPE.as_str(), "application/json");
    insert(&mut response, CACHE_CONTROL.as_str(), "no-store");
    if let Some(required) = &refusal.required {
        insert(&mut response, PAYMENT_REQUIRED, &encode_header(required));
    }
    if let Some(failed) = &refusal.response {
        insert(&mut response, PAYMENT_RESPONSE, &encode_header(failed));
    }
    response
}

pub(crate) fn refund_answer(settled: &SettleResponse) -> Response {
    let body = serde_json::to_value(settled).unwrap_or(Value::Null);
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::OK;
    insert(&mut response, CONTENT_TYPE.as_str(), "application/json");
    insert(&mut response, CACHE_CONTROL.as_str(), "no-store");
    insert(&mut response, PAYMENT_RESPONSE, &encode_header(settled));
    response
}
