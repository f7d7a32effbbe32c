//! The paying reverse proxy: routing by priced prefix ([`proxy_router`]), dispatch on the
//! normalised request target, and forwarding to the upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderName, StatusCode};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};

use super::config::{RouteConfig, ServeConfig};
use super::knobs::HttpKnobs;
use super::limits::{Cidr, LimitCell, LimitState, RouteLimits, after_verify, before_payment};
use super::request_target::{self, RequestTarget};
use x402_upto::engine::Engine;
use x402_upto::server::{ActualCharge, PaymentLayer};
use x402_upto::store::Store;
use x402_upto::telemetry;

/// Response header through which the upstream reports the actual charge.
pub const CHARGE_HEADER: &str = "x-upto-charge";

/// Largest request or response body the proxy buffers (bytes).
pub const MAX_PROXY_BODY: usize = 32 * 1024 * 1024;

/// The upstream origin: scheme and authority, and a base path every forwarded path goes under.
#[derive(Clone, Debug)]
pub(super) struct Upstream {
    http: reqwest::Client,
    /// `scheme://authority` without a trailing slash.
    origin: String,
    /// The origin's own path (`/base`), or empty.
    base_path: String,
    /// Longest time the upstream may take to answer, headers and body.
    pub(super) timeout: Duration,
    /// Longest time to read a request body from the client.
    pub(super) body_timeout: Duration,
}

impl Upstream {
    fn new(upstream: &str, http: &HttpKnobs) -> Result<Self, String> {
        let url: reqwest::Url = upstream
            .parse()
            .map_err(|e| format!("upstream {upstream:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(format!(
                "upstream {upstream:?} must be an http(s) origin with an optional base path"
            ));
        }
        let origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(http.upstream_timeout_secs))
                // A redirect goes back to the client as the upstream sent it: following it
                // here would serve another target under the path that was priced.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("upstream client: {e}"))?,
            origin,
            base_path,
            timeout: Duration::from_secs(http.upstream_timeout_secs),
            body_timeout: Duration::from_secs(http.request_body_timeout_secs),
        })
    }

    /// The upstream URL of a normalised target, checked to serialise to exactly the bytes
    /// that were priced (no re-resolution by the URL parser); `None` if it would not.
    fn url(&self, target: &RequestTarget) -> Option<reqwest::Url> {
        let path = format!("{}{}", self.base_path, target.path());
        let full = match target.query() {
            Some(q) => format!("{}{path}?{q}", self.origin),
            None => format!("{}{path}", self.origin),
        };
        let url: reqwest::Url = full.parse().ok()?;
        (url.path() == path && url.query() == target.query()).then_some(url)
    }
}

pub(super) type HttpService = BoxCloneSyncService<Request, Response, Infallible>;

/// What the proxy routes on: each priced prefix's service, longest prefix first, and the
/// free forwarder. Built whole from one configuration; a reload swaps in another.
#[derive(Clone)]
pub(super) struct Proxy {
    routes: Arc<Vec<(String, HttpService)>>,
    free: HttpService,
    upstream: Arc<Upstream>,
    max_target_bytes: usize,
    /// `resource.url` is built from this origin; without it, from a validated `Host`.
    public_url: Option<String>,
    /// What the services were built from, so a reload keeps the services (and the live
    /// streams they hold) of the routes it does not change.
    built: Arc<Built>,
}

/// The configuration a [`Proxy`]'s services depend on.
struct Built {
    upstream: String,
    public_url: Option<String>,
    http: HttpKnobs,
    routes: Vec<BuiltRoute>,
}

/// One priced route's service, what it was built from, and the cell its limits are read
/// from (a reload that changes only limits updates the cell and keeps the service).
struct BuiltRoute {
    config: RouteConfig,
    limits: LimitCell,
    service: HttpService,
}

/// A route's configuration apart from its limits: what its service is built from.
fn service_config(r: &RouteConfig) -> RouteConfig {
    RouteConfig {
        limits: None,
        free_tier: None,
        ..r.clone()
    }
}

/// The proxy being served: read once per request (a request finishes on the proxy it
/// started with), replaced whole by a reload.
pub(super) type ProxySlot = Arc<parking_lot::RwLock<Arc<Proxy>>>;

/// The proxy router: the request target is normalised once ([`request_target`]); the
/// normalised path picks the price (the longest matching prefix, by whole segments, the
/// prefix itself included) and is what the upstream receives, byte for byte. What cannot
/// be normalised unambiguously is refused with 400 before any pricing or forwarding.
pub fn proxy_router<S: Store + 'static>(
    engine: Engine<S>,
    cfg: &ServeConfig,
) -> Result<Router, String> {
    let state = Arc::new(LimitState::new(cfg.limits.max_tracked));
    let proxy = build_proxy(&engine, cfg, &state, None)?;
    Ok(router(Arc::new(parking_lot::RwLock::new(Arc::new(proxy)))))
}

/// The router over whatever proxy `slot` holds at each request.
pub(super) fn router(slot: ProxySlot) -> Router {
    Router::new().fallback(dispatch).with_state(slot)
}

/// Builds the routes of `cfg`. A route whose settings apart from its limits (and the
/// upstream, `public_url` and `[http]` its service depends on) are unchanged from
/// `previous` keeps its service, with its limits replaced in place.
pub(super) fn build_proxy<S: Store + 'static>(
    engine: &Engine<S>,
    cfg: &ServeConfig,
    state: &Arc<LimitState>,
    previous: Option<&Proxy>,
) -> Result<Proxy, String> {
    let same_base = previous.filter(|p| {
        p.built.upstream == cfg.upstream
            && p.built.public_url == cfg.public_url
            && p.built.http == cfg.http
    });
    let upstream = match same_base {
        Some(p) => Arc::clone(&p.upstream),
        None => Arc::new(Upstream::new(&cfg.upstream, &cfg.http)?),
    };
    let forwarder = match same_base {
        Some(p) => p.free.clone(),
        None => {
            let up = Arc::clone(&upstream);
            BoxCloneSyncService::new(tower::service_fn(move |req: Request| {
                let up = Arc::clone(&up);
                async move { Ok::<_, Infallible>(forward(&up, req).await) }
            }))
        }
    };
    let trusted: Arc<[Cidr]> = cfg.limits.trusted()?.into();
    let mut built = Vec::with_capacity(cfg.routes.len());
    let mut routes = Vec::with_capacity(cfg.routes.len());
    for r in &cfg.routes {
        let prefix = request_target::route_prefix(&r.prefix)
            .ok_or_else(|| format!("route prefix {:?} is not a normalised path", r.prefix))?;
        let limits = RouteLimits::of(
            &prefix,
            &cfg.limits,
            r.limits,
            r.free_tier,
            Arc::clone(&trusted),
            state,
        );
        let wanted = service_config(r);
        let kept = same_base.and_then(|p| {
            p.built
                .routes
                .iter()
                .find(|old| service_config(&old.config) == wanted)
        });
        let (cell, service) = match kept {
            Some(old) => {
                *old.limits.write() = limits;
                (Arc::clone(&old.limits), old.service.clone())
            }
            None => {
                let cell: LimitCell = Arc::new(parking_lot::RwLock::new(limits));
                let service = route_service(engine, cfg, r, &upstream, &forwarder, &cell)?;
                (cell, service)
            }
        };
        routes.push((prefix, service.clone()));
        built.push(BuiltRoute {
            config: r.clone(),
            limits: cell,
            service,
        });
    }
    // Longest prefix first, so the first match is the most specific price.
    routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    Ok(Proxy {
        routes: Arc::new(routes),
        free: forwarder,
        upstream,
        max_target_bytes: cfg.http.max_target_bytes,
        public_url: cfg.public_url.clone(),
        built: Arc::new(Built {
            upstream: cfg.upstream.clone(),
            public_url: cfg.public_url.clone(),
            http: cfg.http.clone(),
            routes: built,
        }),
    })
}

/// A priced route's service: its limits around the payment layer, and the verified
/// payer's around what it runs.
fn route_service<S: Store + 'static>(
    engine: &Engine<S>,
    cfg: &ServeConfig,
    r: &RouteConfig,
    upstream: &Arc<Upstream>,
    forwarder: &HttpService,
    limits: &LimitCell,
) -> Result<HttpService, String> {
    let paid = match r.price {
        None => super::tokens::route_service(
            engine.clone(),
            r,
            Arc::clone(upstream),
            cfg.public_url.as_deref(),
            Arc::clone(limits),
        )?,
        Some(price) => {
            let mut layer = PaymentLayer::fixed(engine.clone(), u128::from(price));
            if let Some(d) = &r.description {
                layer = layer.with_description(d.clone());
            }
            if let Some(base) = &cfg.public_url {
                layer = layer.with_base_url(base.clone());
            }
            let handler = after_verify(
                Arc::clone(limits),
                engine.ledger().clone(),
                forwarder.clone(),
            );
            BoxCloneSyncService::new(layer.layer(handler))
        }
    };
    Ok(before_payment(Arc::clone(limits), paid))
}

/// Normalises the target, checks `Host`, then hands the request to its route's service.
async fn dispatch(State(slot): State<ProxySlot>, mut req: Request) -> Response {
    let proxy = Arc::clone(&slot.read());
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    let target = match request_target::normalize(raw, proxy.max_target_bytes) {
        Ok(t) => t,
        Err(e) => {
            metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => e.code()).increment(1);
            return bad_request(e.code(), &e.to_string());
        }
    };
    if proxy.public_url.is_none() && !valid_host(&req) {
        metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => "bad_host").increment(1);
        return bad_request(
            "bad_host",
            "the Host header is missing or not a host[:port]",
        );
    }
    let Some(url) = proxy.upstream.url(&target) else {
        metrics::counter!(telemetry::TARGETS_REFUSED, "reason" => "target_not_forwardable")
            .increment(1);
        return bad_request(
            "target_not_forwardable",
            "the request target cannot be forwarded unchanged",
        );
    };
    let Ok(uri) = target.to_path_and_query().parse::<http::Uri>() else {
        return bad_request("target_not_forwardable", "the request target is not a URI");
    };
    // The layer prices (and names in its offer) the normalised target; `forward` sends the
    // URL checked here, so the target is normalised and parsed once per request.
    *req.uri_mut() = uri;
    req.extensions_mut().insert(UpstreamUrl(url));
    let service = proxy
        .routes
        .iter()
        .find(|(prefix, _)| request_target::matches_prefix(target.path(), prefix))
        .map_or(&proxy.free, |(_, s)| s)
        .clone();
    let Ok(response) = service.oneshot(req).await;
    response
}

/// A `Host` that may go into `resource.url` ([`x402_upto::server::is_reflectable_host`]).
fn valid_host(req: &Request) -> bool {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(x402_upto::server::is_reflectable_host)
}

fn bad_request(code: &str, message: &str) -> Response {
    refused(StatusCode::BAD_REQUEST, code, message)
}

/// A refusal before pricing: `{"error": code, "message": …}`.
pub(super) fn refused(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The upstream URL [`dispatch`] checked for a request (a request extension).
#[derive(Clone, Debug)]
struct UpstreamUrl(reqwest::Url);

/// Sends a request to the upstream, at the URL [`dispatch`] checked for it.
async fn forward(up: &Upstream, req: Request) -> Response {
    let res = match send(up, req, Encoding::AsAsked, None).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    // A charge the upstream reports but we cannot read is an upstream fault: charging the
    // full price would bill the payer for our misunderstanding, charging nothing would give
    // the work away; neither is served.
    let charge = match res.headers().get(CHARGE_HEADER).map(parse_charge) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(raw)) => {
            tracing::warn!(value = %raw, "upstream sent a malformed {CHARGE_HEADER}; answering 502, nothing charged");
            metrics::counter!(telemetry::UPSTREAM_ERRORS, "kind" => "malformed_charge")
                .increment(1);
            return status(StatusCode::BAD_GATEWAY);
        }
    };
    let mut response = buffered(up, res).await;
    if let Some(c) = charge {
        response.extensions_mut().insert(ActualCharge(c));
    }
    response
}

/// What the upstream may encode its answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encoding {
    /// Whatever the client accepts (its `Accept-Encoding` is forwarded).
    AsAsked,
    /// `identity` only: the proxy reads the answer (a token route's `usage`).
    Identity,
}

/// Sends a request to the upstream at the URL [`dispatch`] checked for it, with the request
/// body (buffered, bounded) exactly as received. `timeout` overrides the upstream timeout
/// (a stream is bounded per chunk by its reader instead).
pub(super) async fn send(
    up: &Upstream,
    req: Request,
    encoding: Encoding,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, Response> {
    let (mut parts, body) = req.into_parts();
    // Only `dispatch` reaches here; without its URL nothing is forwarded.
    let Some(UpstreamUrl(url)) = parts.extensions.remove::<UpstreamUrl>() else {
        return Err(status(StatusCode::BAD_REQUEST));
    };
    let bytes =
        match tokio::time::timeout(up.body_timeout, axum::body::to_bytes(body, MAX_PROXY_BODY))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return Err(status(StatusCode::PAYLOAD_TOO_LARGE)),
            Err(_) => return Err(status(StatusCode::REQUEST_TIMEOUT)),
        };
    let mut out = up.http.request(parts.method.clone(), url).body(bytes);
    for (name, value) in &parts.headers {
        // Payment headers stay here; hop-by-hop headers are not forwarded.
        if is_hop_or_payment(name)
            || (encoding == Encoding::Identity && name == http::header::ACCEPT_ENCODING)
        {
            continue;
        }
        out = out.header(name, value);
    }
    if encoding == Encoding::Identity {
        out = out.header(http::header::ACCEPT_ENCODING, "identity");
    }
    if let Some(t) = timeout {
        out = out.timeout(t);
    }
    out.send().await.map_err(|e| {
        tracing::warn!(error = %e, "upstream request failed");
        status(StatusCode::BAD_GATEWAY)
    })
}

/// The upstream's answer, body read whole (bounded by the upstream timeout), with its
/// end-to-end headers; 502 if the body does not arrive.
pub(super) async fn buffered(up: &Upstream, res: reqwest::Response) -> Response {
    let code = res.status();
    let headers = res.headers().clone();
    let body = match tokio::time::timeout(up.timeout, res.bytes()).await {
        Ok(Ok(b)) => b,
        _ => return status(StatusCode::BAD_GATEWAY),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = code;
    copy_headers(&headers, response.headers_mut());
    response
}

/// The upstream's end-to-end headers, without payment headers and `X-Upto-Charge`.
pub(super) fn copy_headers(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for (name, value) in from {
        if !is_hop_or_payment(name) && name.as_str() != CHARGE_HEADER {
            to.append(name, value.clone());
        }
    }
}

/// `X-Upto-Charge`: a plain decimal in atomic units (no sign, no fraction, no exponent,
/// fits 128 bits); otherwise the raw value, bounded, for the log.
fn parse_charge(value: &http::HeaderValue) -> Result<u128, String> {
    let raw = value.as_bytes();
    std::str::from_utf8(raw)
        .ok()
        .and_then(x402_upto::wire::parse_u128)
        .ok_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(64)]).into_owned())
}

fn is_hop_or_payment(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "proxy-authorization"
            | "content-length"
            | "payment-signature"
            | "payment-response"
            | "payment-required"
    )
}

pub(super) fn status(code: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = code;
    r
}
