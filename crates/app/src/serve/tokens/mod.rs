//! Routes priced by tokens: `serve` in front of an OpenAI- or Anthropic-compatible API.
//!
//! A token route (`tokens = "openai"` or `"anthropic"` in a `[[route]]`) reads the JSON
//! request body before pricing it: its `model` picks a row of the route's price table (per
//! million input and output tokens), and the request's **maximum** is
//!
//! - input bound: the body's length in bytes (a tokenizer's token covers at least one byte
//!   of text), capped at `max_input_tokens` if set;
//! - output bound: the larger of `max_tokens` and `max_completion_tokens`, else
//!   `default_max_tokens`, else the request is refused; times `n` (default 1);
//! - price = ⌈(input bound × input price + output bound × output price) / 10⁶⌉.
//!
//! That price is the offer (the 402 quotes it) and what the voucher pays for. The body that
//! was parsed is the body forwarded, byte for byte; the upstream is asked for an unencoded
//! answer (`Accept-Encoding: identity`) so that the proxy can read its `usage`, and an
//! encoded answer is a 502. The actual charge is the same formula on the upstream's `usage`,
//! capped at the signed price. A JSON answer without a readable `usage` is a 502, nothing
//! charged.
//!
//! A streamed request (`"stream": true`; OpenAI must also ask
//! `stream_options.include_usage`) goes through the metered-stream layer: the charge follows
//! what was delivered (estimated, see [`Tally::estimate`]) while the stream runs, so the
//! voucher renews mid-stream once its budget runs low; at the end the stream's own usage
//! (OpenAI's last chunk; Anthropic's `message_start` and `message_delta`) replaces the
//! estimate. A stream that ends without a complete usage (client gone, upstream cut,
//! usage missing or malformed) is charged the estimate of what was delivered. Never more
//! than the signed budget.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;
use tower::{Layer as _, service_fn};

use super::config::{RouteConfig, atomic};
use super::proxy::{
    Encoding, MAX_PROXY_BODY, Upstream, buffered, copy_headers, refused, send, status,
};
use x402_upto::engine::Engine;
use x402_upto::server::{Charge, PaymentLayer, Price, STREAM_ID_HEADER};
use x402_upto::store::Store;
use x402_upto::telemetry;

mod stream;
mod usage;

use stream::*;
use usage::*;

/// The API a token route speaks: where `max_tokens` and `usage` are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum TokenApi {
    /// OpenAI chat completions: `usage.prompt_tokens` / `completion_tokens`.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic messages: `usage.input_tokens` (+ cache tokens) / `output_tokens`.
    #[serde(rename = "anthropic")]
    Anthropic,
}

/// A model's prices, atomic units per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Per million input (prompt) tokens.
    #[serde(deserialize_with = "atomic")]
    pub input: u128,
    /// Per million output (completion) tokens.
    #[serde(deserialize_with = "atomic")]
    pub output: u128,
}

/// Largest `max_tokens` (and `n`) priced; above it the request is refused.
const MAX_OUTPUT_TOKENS: u64 = u32::MAX as u64;
const MAX_CHOICES: u64 = 128;
/// Largest SSE event the proxy holds while looking for its end (bytes).
const MAX_EVENT_BYTES: usize = 1 << 20;
/// Request timeout of a streamed answer: it is bounded per chunk instead.
const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The start-up checks of a token route.
pub(super) fn check_route(r: &RouteConfig) -> Result<(), String> {
    let p = &r.prefix;
    if r.models.is_empty() {
        return Err(format!(
            "route {p:?}: a token route needs a [route.models] table"
        ));
    }
    if let Some((name, _)) = r.models.iter().find(|(_, m)| m.input == 0 && m.output == 0) {
        return Err(format!("route {p:?}: model {name:?} has no price"));
    }
    let positive = [
        (r.default_max_tokens, "default_max_tokens"),
        (r.max_input_tokens, "max_input_tokens"),
        (r.stream_increment_tokens, "stream_increment_tokens"),
    ];
    if let Some((_, name)) = positive.iter().find(|(v, _)| *v == Some(0)) {
        return Err(format!("route {p:?}: {name} must be at least 1"));
    }
    if r.default_max_tokens.is_some_and(|d| d > MAX_OUTPUT_TOKENS) {
        return Err(format!("route {p:?}: default_max_tokens is too large"));
    }
    if r.renewal_grace_secs == 0 {
        return Err(format!(
            "route {p:?}: renewal_grace_secs must be at least 1"
        ));
    }
    Ok(())
}

/// A token route's pricing rules.
#[derive(Debug)]
struct TokenRoute {
    api: TokenApi,
    models: HashMap<String, ModelPrice>,
    default_max_tokens: Option<u64>,
    max_input_tokens: Option<u64>,
    stream_increment_tokens: Option<u64>,
    grace: Duration,
}

/// ⌈(input × input price + output × output price) / 10⁶⌉; `None` past 128 bits.
fn cost(p: ModelPrice, input: u64, output: u64) -> Option<u128> {
    let total = p
        .input
        .checked_mul(u128::from(input))?
        .checked_add(p.output.checked_mul(u128::from(output))?)?;
    Some(total.div_ceil(1_000_000))
}

/// What a request body asks for, and its price: a request extension the layer prices by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quote {
    model: ModelPrice,
    /// Input tokens the request may cost at most (its priced bound).
    input_bound: u64,
    /// Output tokens it may cost at most.
    output_bound: u64,
    /// The input estimate of a stream that ends without usage: a quarter of the body's
    /// bytes, never above the bound.
    input_estimate: u64,
    stream: bool,
    /// The request's maximum: the cost of both bounds.
    maximum: u128,
    /// The offer's price: the whole maximum, or a stream's first increment.
    price: u128,
}

/// The request fields pricing reads. Derived: a repeated field is an error, so the value
/// priced cannot differ from the one an upstream keeping the first occurrence would use.
#[derive(Deserialize)]
struct Asked {
    model: String,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    n: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Why a body cannot be priced: status, code, message.
type Unpriceable = (StatusCode, &'static str, String);

fn invalid(code: &'static str, message: impl Into<String>) -> Unpriceable {
    (StatusCode::BAD_REQUEST, code, message.into())
}

impl TokenRoute {
    fn new(r: &RouteConfig) -> Result<Self, String> {
        check_route(r)?;
        Ok(Self {
            api: r.tokens.ok_or("not a token route")?,
            models: r.models.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default_max_tokens: r.default_max_tokens,
            max_input_tokens: r.max_input_tokens,
            stream_increment_tokens: r.stream_increment_tokens,
            grace: Duration::from_secs(r.renewal_grace_secs),
        })
    }

    /// Prices a request body (see the module's rules).
    fn quote(&self, body: &[u8]) -> Result<Quote, Unpriceable> {
        let asked: Asked = serde_json::from_slice(body).map_err(|e| {
            let why: String = e.to_string().chars().take(200).collect();
            invalid(
                "invalid_body",
                format!("the body is not a priceable JSON request: {why}"),
            )
        })?;
        let model = *self.models.get(&asked.model).ok_or_else(|| {
            let name: String = asked.model.chars().take(100).collect();
            invalid("unknown_model", format!("model {name:?} is not sold here"))
        })?;
        // Whichever API: an upstream honouring either field or `n` stays within the bound.
        let max_tokens = asked
            .max_tokens
            .max(asked.max_completion_tokens)
            .or(self.default_max_tokens)
            .ok_or_else(|| {
                invalid(
                    "max_tokens_required",
                    "this route prices max_tokens: send one",
                )
            })?;
        let choices = asked.n.unwrap_or(1);
        if max_tokens > MAX_OUTPUT_TOKENS || !(1..=MAX_CHOICES).contains(&choices) {
            return Err(invalid(
                "max_tokens_out_of_range",
                format!("max_tokens ≤ {MAX_OUTPUT_TOKENS} and 1 ≤ n ≤ {MAX_CHOICES}"),
            ));
        }
        let stream = asked.stream.unwrap_or(false);
        let include_usage = asked
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
        if stream && self.api == TokenApi::OpenAi && !include_usage {
            return Err(invalid(
                "stream_usage_required",
                "a stream is charged by its usage: ask for it with \
                 \"stream_options\": {\"include_usage\": true}",
            ));
        }
        let bytes = u64::try_from(body.len()).unwrap_or(u64::MAX);
        let input_bound = self.max_input_tokens.map_or(bytes, |cap| bytes.min(cap));
        let output_bound = max_tokens * choices;
        let first_output = match (stream, self.stream_increment_tokens) {
            (true, Some(slice)) => output_bound.min(slice),
            _ => output_bound,
        };
        let too_large = || invalid("price_out_of_range", "this request's maximum is too large");
        let maximum = cost(model, input_bound, output_bound)
            .filter(|p| *p <= u128::from(u64::MAX))
            .ok_or_else(too_large)?;
        let price = cost(model, input_bound, first_output).ok_or_else(too_large)?;
        Ok(Quote {
            model,
            input_bound,
            output_bound,
            input_estimate: (bytes / 4).min(input_bound),
            stream,
            maximum,
            // A priced route never offers 0 (a voucher must move the channel).
            price: price.max(1),
        })
    }
}

/// The service of a token route: reads and prices the body, then pays and forwards it
/// through one of two payment layers (plain, or metered stream).
pub(super) fn route_service<S: Store + 'static>(
    engine: Engine<S>,
    r: &RouteConfig,
    upstream: Arc<Upstream>,
    public_url: Option<&str>,
    limits: super::limits::LimitCell,
) -> Result<BoxCloneSyncService<Request, Response, Infallible>, String> {
    let route = Arc::new(TokenRoute::new(r)?);
    let price = Price::Dynamic(Arc::new(|req: &Request| {
        // Every request the layers see was quoted, except renewals (priced by their stream).
        req.extensions().get::<Quote>().map_or(0, |q| q.price)
    }));
    let ledger = engine.ledger().clone();
    let mut layer = PaymentLayer::new(engine, price);
    if let Some(d) = &r.description {
        layer = layer.with_description(d.clone());
    }
    if let Some(base) = public_url {
        layer = layer.with_base_url(base.to_owned());
    }
    let handler = {
        let (up, route) = (Arc::clone(&upstream), Arc::clone(&route));
        BoxCloneSyncService::new(service_fn(move |req: Request| {
            let (up, route) = (Arc::clone(&up), Arc::clone(&route));
            async move { Ok::<_, Infallible>(answer(&up, &route, req).await) }
        }))
    };
    // The verified payer's bucket (a token route has no free tier: its handler charges usage).
    let handler = super::limits::after_verify(limits, ledger, handler);
    let once = BoxCloneSyncService::new(layer.clone().layer(handler.clone()));
    let mut streaming = layer.streaming();
    if route.stream_increment_tokens.is_none() {
        // One voucher covers the whole maximum, which a stream's charge never passes: ask
        // for a renewal only if the budget is used to the last unit.
        streaming = streaming.renew_at_percent(100);
    }
    let streamed = BoxCloneSyncService::new(streaming.layer(handler));
    Ok(BoxCloneSyncService::new(service_fn(move |req: Request| {
        let (once, streamed) = (once.clone(), streamed.clone());
        let (up, route) = (Arc::clone(&upstream), Arc::clone(&route));
        async move {
            if req.headers().contains_key(STREAM_ID_HEADER) {
                // A renewal of a live stream: the streaming layer answers it; nothing is
                // forwarded.
                let Ok(r) = streamed.oneshot(req).await;
                return Ok::<_, Infallible>(r);
            }
            let req = match priced(&up, &route, req).await {
                Ok(req) => req,
                Err(refusal) => return Ok(refusal),
            };
            let stream = req.extensions().get::<Quote>().is_some_and(|q| q.stream);
            let Ok(r) = if stream {
                streamed.oneshot(req).await
            } else {
                once.oneshot(req).await
            };
            Ok(r)
        }
    })))
}

/// Reads the body (bounded), prices it and puts it back unchanged, with its [`Quote`].
async fn priced(up: &Upstream, route: &TokenRoute, req: Request) -> Result<Request, Response> {
    let (mut parts, body) = req.into_parts();
    let encoded = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if encoded || !json {
        return Err(refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_body",
            "a token route reads an unencoded application/json body",
        ));
    }
    let bytes =
        match tokio::time::timeout(up.body_timeout, axum::body::to_bytes(body, MAX_PROXY_BODY))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return Err(status(StatusCode::PAYLOAD_TOO_LARGE)),
            Err(_) => return Err(status(StatusCode::REQUEST_TIMEOUT)),
        };
    let quote = route.quote(&bytes).map_err(|(code, reason, message)| {
        metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => reason).increment(1);
        refused(code, reason, &message)
    })?;
    parts.extensions.insert(quote);
    // The bytes priced are the bytes forwarded.
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

/// The paid part: forwards the request and charges the upstream's usage.
async fn answer(up: &Upstream, route: &TokenRoute, req: Request) -> Response {
    let (Some(quote), Some(charge)) = (
        req.extensions().get::<Quote>().copied(),
        req.extensions().get::<Charge>().cloned(),
    ) else {
        return status(StatusCode::BAD_GATEWAY);
    };
    // A stream is bounded per chunk once it answers; its headers, like any answer's, within
    // the upstream timeout.
    let timeout = quote.stream.then_some(STREAM_TIMEOUT);
    let res =
        match tokio::time::timeout(up.timeout, send(up, req, Encoding::Identity, timeout)).await {
            Ok(Ok(r)) => r,
            Ok(Err(answer)) => return answer,
            Err(_) => return status(StatusCode::BAD_GATEWAY),
        };
    if res.status().as_u16() >= 400 {
        // The upstream refused: its answer passes, nothing is charged (the layer's rule).
        return buffered(up, res).await;
    }
    let encoded = res
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let sse = res
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let fault = if !res.status().is_success() {
        Some("unexpected_status")
    } else if encoded {
        Some("encoded_answer")
    } else if quote.stream != sse {
        Some("unexpected_content_type")
    } else {
        None
    };
    if let Some(kind) = fault {
        return upstream_fault(kind);
    }
    if quote.stream {
        return relay(up, route, quote, charge, res);
    }
    let headers = res.headers().clone();
    let body = match tokio::time::timeout(up.timeout, read_bounded(res)).await {
        Ok(Some(b)) => b,
        _ => return status(StatusCode::BAD_GATEWAY),
    };
    let Some(usage) = json_usage(route.api, &body) else {
        return upstream_fault("missing_usage");
    };
    // Capped at the signed price: an upstream counting more (images, tools) than the input
    // bound is not charged beyond what the payer signed.
    let actual = cost(quote.model, usage.input, usage.output)
        .unwrap_or(u128::MAX)
        .min(charge.max());
    charge.set(actual);
    let mut response = Response::new(Body::from(body));
    copy_headers(&headers, response.headers_mut());
    response
}

/// An upstream answer the proxy cannot charge by: 502, nothing charged, nothing forwarded.
fn upstream_fault(kind: &'static str) -> Response {
    tracing::warn!(
        kind,
        "token route: unusable upstream answer; 502, nothing charged"
    );
    metrics::counter!(telemetry::UPSTREAM_ERRORS, "kind" => kind).increment(1);
    status(StatusCode::BAD_GATEWAY)
}

async fn read_bounded(res: reqwest::Response) -> Option<Bytes> {
    let mut body = BytesMut::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk.ok()?);
        if body.len() > MAX_PROXY_BODY {
            return None;
        }
    }
    Some(body.freeze())
}

#[cfg(test)]
mod tests;
