//! Rate limits and the free tier of priced routes: token buckets per client address and per
//! payer, and a per-payer allowance of requests served without charge.
//!
//! Where each check sits, and why (`docs/security.md`, "Rate limits"):
//!
//! 1. **By address**, first, before the payment header is read: every request to a priced
//!    route takes a token from its client address's bucket ([`client_ip`]).
//! 2. **By payer, looked at** (nothing taken) before the payment layer: the payer named in
//!    the header's channel config. Unverified, so it may only refuse: a payer whose bucket
//!    is empty is answered 429 without a signature recovery, a channel lookup or a hold. A
//!    forged header naming someone else's channel cannot empty that bucket, since nothing is
//!    taken here.
//! 3. **By payer, taken**, once the engine has verified the voucher (it runs as the payment
//!    layer's handler, before anything is forwarded): the payer is the ledger's, of the
//!    channel the engine holds. Only a payer's own valid signatures spend its tokens. A
//!    payer racing itself over several channels can pass step 2 and lose here: that request
//!    is answered 429, its hold released with nothing charged and nothing stored.
//! 4. **Free tier**, in the same place: while the payer's allowance lasts the request is
//!    charged 0. Proving control of the address costs a valid voucher on a funded channel
//!    (signed for the price as usual; the receipt says 0 was charged).
//!
//! A refusal is `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up).

mod bucket;
mod client_ip;
#[cfg(test)]
mod tests;

pub use bucket::{BucketMap, Rate};
pub use client_ip::{Cidr, client_ip, ip_key};

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use axum::extract::Request;
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use x402_upto::Ledger;
use x402_upto::server::Charge;
use x402_upto::server::STREAM_ID_HEADER;
use x402_upto::typed_data::ChannelId;
use x402_upto::wire::{
    BatchPayload, MAX_PAYMENT_HEADER_BYTES, PAYMENT_SIGNATURE, PaymentPayload, VoucherView,
    decode_header_bytes,
};

use super::proxy::refused;
use crate::telemetry;

type HttpService = BoxCloneSyncService<Request, Response, Infallible>;

/// `[limits]`: the default buckets of every priced route, the trusted reverse proxies, and
/// the memory bound.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitKnobs {
    /// Requests by client address (IPv6: by /64), per route.
    pub ip: Option<RateKnobs>,
    /// Requests by payer (the channel's `payer`), per route.
    pub payer: Option<RateKnobs>,
    /// Peers whose `X-Forwarded-For` is believed (`10.0.0.0/8`, `::1`); none by default,
    /// so the socket's address is the client's.
    pub trusted_proxies: Vec<String>,
    /// Buckets held at most, for each of address, payer and free tier (idle ones are
    /// dropped first). Fixed at start-up.
    pub max_tracked: usize,
}

impl Default for LimitKnobs {
    fn default() -> Self {
        Self {
            ip: None,
            payer: None,
            trusted_proxies: Vec::new(),
            max_tracked: 65_536,
        }
    }
}

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateKnobs {
    /// Tokens refilled per second (may be below 1: `0.1` is one request per 10 s).
    pub rate: f64,
    /// Bucket size: requests allowed at once.
    pub burst: u32,
}

impl RateKnobs {
    fn rate(self) -> Rate {
        Rate {
            per_second: self.rate,
            burst: f64::from(self.burst),
        }
    }

    fn check(self, what: &str) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) || self.burst < 1 {
            return Err(format!("{what}: rate must be above 0 and burst at least 1"));
        }
        Ok(())
    }
}

/// `[route.limits]`: this route's buckets instead of `[limits]`'s.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouteLimitKnobs {
    /// Replaces `limits.ip` on this route.
    pub ip: Option<RateKnobs>,
    /// Replaces `limits.payer` on this route.
    pub payer: Option<RateKnobs>,
}

/// `[route.free_tier]`: `requests` per `period_secs` per payer served without charge
/// (refilled continuously: one more every `period_secs / requests`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FreeTierKnobs {
    /// Free requests per period.
    pub requests: u32,
    /// The period (seconds).
    pub period_secs: u64,
}

impl FreeTierKnobs {
    fn rate(self) -> Rate {
        Rate {
            per_second: f64::from(self.requests) / self.period_secs as f64,
            burst: f64::from(self.requests),
        }
    }
}

impl LimitKnobs {
    /// The knobs' own rules (routes are checked by [`check_route`]).
    pub fn check(&self) -> Result<(), String> {
        if let Some(r) = self.ip {
            r.check("limits.ip")?;
        }
        if let Some(r) = self.payer {
            r.check("limits.payer")?;
        }
        if self.max_tracked < 16 {
            return Err("limits.max_tracked must be at least 16".into());
        }
        self.trusted()?;
        Ok(())
    }

    /// The trusted proxies, parsed.
    pub fn trusted(&self) -> Result<Vec<Cidr>, String> {
        self.trusted_proxies
            .iter()
            .map(|s| Cidr::parse(s))
            .collect()
    }
}

/// A route's `limits` and `free_tier`: valid buckets; the free tier on fixed-price routes
/// only (a token route's charge is its usage, which the handler sets itself).
pub fn check_route(
    prefix: &str,
    limits: Option<RouteLimitKnobs>,
    free: Option<FreeTierKnobs>,
    fixed_price: bool,
) -> Result<(), String> {
    if let Some(l) = limits {
        if let Some(r) = l.ip {
            r.check(&format!("route {prefix:?}: limits.ip"))?;
        }
        if let Some(r) = l.payer {
            r.check(&format!("route {prefix:?}: limits.payer"))?;
        }
    }
    if let Some(f) = free {
        if f.requests < 1 || f.period_secs < 1 {
            return Err(format!(
                "route {prefix:?}: free_tier.requests and free_tier.period_secs must be at least 1"
            ));
        }
        if !fixed_price {
            return Err(format!(
                "route {prefix:?}: a free tier is for fixed-price routes (a token route charges its usage)"
            ));
        }
    }
    Ok(())
}

/// The buckets of every route, kept across configuration reloads (a reload changes rates,
/// not what was spent).
pub struct LimitState {
    ip: BucketMap<(u32, IpAddr)>,
    payer: BucketMap<(u32, Address)>,
    free: BucketMap<(u32, Address)>,
    /// Route prefix → the number keying its buckets (stable across reloads).
    route_ids: parking_lot::Mutex<HashMap<String, u32>>,
    max_tracked: usize,
}

impl std::fmt::Debug for LimitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitState")
            .field("max_tracked", &self.max_tracked)
            .finish_non_exhaustive()
    }
}

impl LimitState {
    /// Empty buckets, at most `max_tracked` of each kind.
    pub fn new(max_tracked: usize) -> Self {
        Self {
            ip: BucketMap::new(max_tracked),
            payer: BucketMap::new(max_tracked),
            free: BucketMap::new(max_tracked),
            route_ids: parking_lot::Mutex::default(),
            max_tracked,
        }
    }

    /// The bound the maps were made with.
    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }

    /// Buckets held (address, payer, free tier).
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.ip.len(), self.payer.len(), self.free.len())
    }

    fn route_id(&self, prefix: &str) -> u32 {
        let mut ids = self.route_ids.lock();
        let next = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        *ids.entry(prefix.to_owned()).or_insert(next)
    }
}

/// One route's limits as configured now.
#[derive(Debug)]
pub struct RouteLimits {
    route: u32,
    /// The route's prefix, the `route` label of the metrics.
    label: String,
    ip: Option<Rate>,
    payer: Option<Rate>,
    free: Option<Rate>,
    trusted: Arc<[Cidr]>,
    state: Arc<LimitState>,
}

impl RouteLimits {
    /// The limits of route `prefix`: its own buckets, else `[limits]`'s; `None` when the
    /// route has none.
    pub fn of(
        prefix: &str,
        global: &LimitKnobs,
        route: Option<RouteLimitKnobs>,
        free: Option<FreeTierKnobs>,
        trusted: Arc<[Cidr]>,
        state: &Arc<LimitState>,
    ) -> Option<Arc<Self>> {
        let route_knobs = route.unwrap_or_default();
        let ip = route_knobs.ip.or(global.ip).map(RateKnobs::rate);
        let payer = route_knobs.payer.or(global.payer).map(RateKnobs::rate);
        let free = free.map(FreeTierKnobs::rate);
        if ip.is_none() && payer.is_none() && free.is_none() {
            return None;
        }
        Some(Arc::new(Self {
            route: state.route_id(prefix),
            label: prefix.to_owned(),
            ip,
            payer,
            free,
            trusted,
            state: Arc::clone(state),
        }))
    }

    /// Whether the payment layer's handler must run [`after_verify`].
    pub fn checks_verified_payer(&self) -> bool {
        self.payer.is_some() || self.free.is_some()
    }
}

/// A route's limits as configured now (`None`: none); a reload that changes only limits
/// replaces them here and keeps the route's service.
pub type LimitCell = Arc<parking_lot::RwLock<Option<Arc<RouteLimits>>>>;

/// The payer a payment header names (channel config) and the channel of its voucher, read
/// by the engine's own readers ([`named_payer`]), not verified. A request extension from
/// [`before_payment`] to [`after_verify`].
#[derive(Clone, Copy, Debug)]
struct Claimed {
    payer: Address,
    channel: ChannelId,
}

/// The payer and channel of a voucher or deposit header. Refunds (the payer taking its
/// money back) and stream renewals (extending a stream already admitted, which no handler
/// runs for) are not limited by payer.
fn claimed(req: &Request) -> Option<Claimed> {
    named_payer(req.headers()).map(|(payer, channel)| Claimed { payer, channel })
}

/// The payer and channel a voucher or deposit header names, unverified: what the payer
/// limits key on (see [`claimed`]'s rules).
pub fn named_payer(headers: &http::HeaderMap) -> Option<(Address, ChannelId)> {
    if headers.contains_key(STREAM_ID_HEADER) {
        return None;
    }
    let raw = headers.get(PAYMENT_SIGNATURE)?;
    let json = decode_header_bytes(raw.as_bytes(), MAX_PAYMENT_HEADER_BYTES).ok()?;
    // The engine's one-pass reader first (it answers only what the general decoder reads
    // the same way), then the general decoder.
    if let Some(view) = VoucherView::parse(&json) {
        return Some((
            view.channel_config.payer,
            ChannelId(view.voucher.channel_id),
        ));
    }
    let payload: PaymentPayload = serde_json::from_slice(&json).ok()?;
    let batch = BatchPayload::parse(&payload.payload).ok()?;
    if matches!(batch, BatchPayload::Refund { .. }) {
        return None;
    }
    Some((
        batch.channel_config().payer,
        ChannelId(batch.voucher().channel_id),
    ))
}

/// `inner` (the route's payment layer) behind the address bucket and a look at the named
/// payer's bucket.
pub fn before_payment(cell: LimitCell, inner: HttpService) -> HttpService {
    BoxCloneSyncService::new(tower::service_fn(move |mut req: Request| {
        let limits = cell.read().clone();
        let inner = inner.clone();
        async move {
            let Some(limits) = limits else {
                return inner.oneshot(req).await;
            };
            let state = &limits.state;
            if let Some(rate) = limits.ip {
                let ip = client_ip(req.extensions(), req.headers(), &limits.trusted);
                let key = (limits.route, ip_key(ip));
                if let Err(wait) = state.ip.take(&key, rate, state.ip.now()) {
                    return Ok(too_many(&limits, "ip", wait));
                }
            }
            if limits.checks_verified_payer()
                && let Some(c) = claimed(&req)
            {
                if let Some(rate) = limits.payer {
                    let key = (limits.route, c.payer);
                    if let Err(wait) = state.payer.peek(&key, rate, state.payer.now()) {
                        return Ok(too_many(&limits, "payer", wait));
                    }
                }
                req.extensions_mut().insert(c);
            }
            inner.oneshot(req).await
        }
    }))
}

/// `inner` (what a paid request runs) behind the verified payer's bucket and free tier. Runs
/// as the payment layer's handler: only once the engine verified the voucher and holds its
/// channel; an answer ≥ 400 from here is charged nothing.
pub fn after_verify(cell: LimitCell, ledger: Ledger, inner: HttpService) -> HttpService {
    BoxCloneSyncService::new(tower::service_fn(move |req: Request| {
        let limits = cell.read().clone();
        let (ledger, inner) = (ledger.clone(), inner.clone());
        async move {
            if let Some(limits) = limits
                && limits.checks_verified_payer()
                && let Some(payer) = verified_payer(&req, &ledger)
            {
                let state = &limits.state;
                let key = (limits.route, payer);
                if let Some(rate) = limits.payer
                    && let Err(wait) = state.payer.take(&key, rate, state.payer.now())
                {
                    return Ok(too_many(&limits, "payer", wait));
                }
                if let Some(rate) = limits.free
                    && state.free.take(&key, rate, state.free.now()).is_ok()
                    && let Some(charge) = req.extensions().get::<Charge>()
                {
                    charge.set(0);
                    metrics::counter!(telemetry::FREE_REQUESTS, "route" => limits.label.clone())
                        .increment(1);
                }
            }
            inner.oneshot(req).await
        }
    }))
}

/// The payer of the voucher the engine verified for this request: the ledger's record of
/// the channel the header names, held now (by this request), whose payer is the one the
/// header named. The header was read by the engine's own readers and its channel id is the
/// hash of its config, so the two agree; if they ever did not, nothing is taken and nothing
/// is free.
fn verified_payer(req: &Request, ledger: &Ledger) -> Option<Address> {
    let c = req.extensions().get::<Claimed>()?;
    let record = ledger.record(&c.channel)?;
    (ledger.is_held(&c.channel) && record.payer() == c.payer).then_some(c.payer)
}

/// `429` with `Retry-After` in whole seconds, rounded up (at least 1).
fn too_many(limits: &RouteLimits, scope: &'static str, wait: Duration) -> Response {
    metrics::counter!(telemetry::RATE_LIMITED, "scope" => scope, "route" => limits.label.clone())
        .increment(1);
    let secs = retry_after_secs(wait);
    let mut r = refused(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        &format!("too many requests from this {scope} on this route; retry in {secs} s"),
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A wait as `Retry-After` seconds: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
