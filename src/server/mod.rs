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
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, StatusCode};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

pub mod proxy;

use crate::engine::{Authorized, BoxFuture, Engine, Refusal};
use crate::store::Store;
use crate::wire::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, ResourceInfo, SettleResponse,
    encode_header,
};

/// The handle a handler uses to report what the request actually cost.
#[derive(Clone, Debug)]
pub struct Charge {
    max: u128,
    actual: Arc<Mutex<Option<u128>>>,
}

impl Charge {
    fn new(max: u128) -> Self {
        Self {
            max,
            actual: Arc::new(Mutex::new(None)),
        }
    }
    /// The most this request may cost (the route's price for it).
    pub fn max(&self) -> u128 {
        self.max
    }
    /// Sets the actual charge; the last call wins. Above [`Charge::max`] the payment fails.
    pub fn set(&self, amount: u128) {
        *self.actual.lock() = Some(amount);
    }
    /// The charge reported so far.
    pub fn get(&self) -> Option<u128> {
        *self.actual.lock()
    }
    /// Adds `amount` to the charge if the total stays within [`Charge::max`]; `false` (and no
    /// change) when it would not. A metered stream stops when this returns `false`.
    pub fn add(&self, amount: u128) -> bool {
        let mut actual = self.actual.lock();
        let next = actual.unwrap_or(0).saturating_add(amount);
        if next > self.max {
            return false;
        }
        *actual = Some(next);
        true
    }
    /// What is left of the maximum.
    pub fn remaining(&self) -> u128 {
        self.max.saturating_sub(self.get().unwrap_or(0))
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
        }
    }

    /// Metered Server-Sent Events: the handler streams and charges as it goes with
    /// [`Charge::add`] (stopping when it returns `false`); the payment is settled when the
    /// stream ends, and its `PAYMENT-RESPONSE` is sent as a final
    /// `event: payment-response` whose data is the base64 header value. See
    /// `docs/protocol.md`, "Streaming".
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
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
            layer: Arc::new(PaymentLayer {
                engine: self.engine.clone(),
                price: self.price.clone(),
                description: self.description.clone(),
                mime_type: self.mime_type.clone(),
                base_url: self.base_url.clone(),
                streaming: self.streaming,
            }),
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
        Box::pin(async move { Ok(handle(&layer, inner, req).await) })
    }
}

async fn handle<S, I>(layer: &PaymentLayer<S>, inner: I, mut req: Request<Body>) -> Response
where
    S: Store + 'static,
    I: Service<Request<Body>, Response = Response, Error = Infallible> + Send,
    I::Future: Send,
{
    let price = layer.price.of(&req);
    let resource = ResourceInfo {
        url: resource_url(layer, &req),
        description: layer.description.clone(),
        mime_type: layer.mime_type.clone(),
    };
    let header = req
        .headers()
        .get(PAYMENT_SIGNATURE)
        .map(|v| v.as_bytes().to_vec());
    let paid = match layer
        .engine
        .authorize(header.as_deref(), price, &resource)
        .await
    {
        Err(refusal) => return refusal_response(&refusal),
        Ok(Authorized::Refunded(settled)) => return refund_answer(&settled),
        Ok(Authorized::Paid(paid)) => paid,
    };
    let charge = Charge::new(price);
    req.extensions_mut().insert(charge.clone());
    let Ok(mut response) = inner.oneshot(req).await;
    if response.status().as_u16() >= 400 {
        // The handler failed: release the channel, charge nothing.
        drop(paid);
        return response;
    }
    if layer.streaming {
        return metered_stream(layer.engine.clone(), paid, charge, response);
    }
    let actual = charge
        .get()
        .or_else(|| response.extensions().get::<ActualCharge>().map(|c| c.0))
        .unwrap_or(price);
    match layer.engine.settle(paid, actual).await {
        Ok(settled) => {
            insert(&mut response, PAYMENT_RESPONSE, &encode_header(&settled));
            response
        }
        Err(refusal) => refusal_response(&refusal),
    }
}

fn resource_url<S>(layer: &PaymentLayer<S>, req: &Request<Body>) -> String {
    let path = req.uri().path();
    match &layer.base_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = req
                .headers()
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

fn insert(response: &mut Response, name: &'static str, value: &str) {
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

fn refund_answer(settled: &SettleResponse) -> Response {
    let body = serde_json::to_value(settled).unwrap_or(Value::Null);
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::OK;
    insert(&mut response, CONTENT_TYPE.as_str(), "application/json");
    insert(&mut response, CACHE_CONTROL.as_str(), "no-store");
    insert(&mut response, PAYMENT_RESPONSE, &encode_header(settled));
    response
}

/// Settles a streamed payment exactly once: at the end of the stream, or (client gone) when
/// the stream is dropped, charging what was delivered.
struct StreamSettlement<S: Store + 'static> {
    engine: Engine<S>,
    paid: Option<crate::engine::Paid>,
    charge: Charge,
}

impl<S: Store + 'static> StreamSettlement<S> {
    fn actual(&self) -> u128 {
        self.charge.get().unwrap_or(self.charge.max)
    }

    /// The final SSE event carrying the payment result.
    async fn finish(mut self) -> bytes::Bytes {
        let actual = self.actual();
        let Some(paid) = self.paid.take() else {
            return bytes::Bytes::new();
        };
        let event = match self.engine.settle(paid, actual).await {
            Ok(settled) => format!(
                "event: payment-response\ndata: {}\n\n",
                encode_header(&settled)
            ),
            Err(refusal) => {
                let failed = refusal
                    .response
                    .as_ref()
                    .map(encode_header)
                    .unwrap_or_default();
                format!("event: payment-error\ndata: {failed}\n\n")
            }
        };
        bytes::Bytes::from(event)
    }
}

impl<S: Store + 'static> Drop for StreamSettlement<S> {
    fn drop(&mut self) {
        if let Some(paid) = self.paid.take() {
            let engine = self.engine.clone();
            let actual = self.actual();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = engine.settle(paid, actual).await {
                        tracing::warn!(error = %e, "settling an interrupted stream failed");
                    }
                });
            }
        }
    }
}

fn metered_stream<S: Store + 'static>(
    engine: Engine<S>,
    paid: crate::engine::Paid,
    charge: Charge,
    response: Response,
) -> Response {
    use futures_util::StreamExt as _;
    let (parts, body) = response.into_parts();
    let settlement = StreamSettlement {
        engine,
        paid: Some(paid),
        charge,
    };
    let tail =
        futures_util::stream::once(async move { Ok::<_, axum::Error>(settlement.finish().await) });
    let body = Body::from_stream(body.into_data_stream().chain(tail));
    Response::from_parts(parts, body)
}
