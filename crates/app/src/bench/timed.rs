//! The timed phase: one virtual client sending its presigned vouchers back to back on one
//! HTTP/1.1 keep-alive connection, timing each request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::presign::Prepared;
use x402_upto::wire::{
    PAYMENT_REQUIRED, PAYMENT_RESPONSE, PAYMENT_SIGNATURE, PaymentRequired, decode_header,
};

pub(super) struct ClientResult {
    pub(super) ok: u64,
    pub(super) latencies_us: Vec<u32>,
    pub(super) error: Option<String>,
}

/// How a virtual client walks its vouchers and judges answers.
#[derive(Clone, Copy)]
pub(super) struct Rules {
    /// Charge per request: voucher `k` is `first_max + k × step`.
    pub(super) step: u128,
    /// A 200 must carry a `PAYMENT-RESPONSE`.
    pub(super) must_be_paid: bool,
    /// Reuse the pool round robin (stateless target).
    pub(super) cycle: bool,
}

pub(super) async fn client_loop(
    p: Prepared,
    authority: &str,
    path: &str,
    rules: Rules,
    stop: &AtomicBool,
    exhausted: &AtomicBool,
    start: &tokio::sync::Barrier,
) -> ClientResult {
    let mut out = ClientResult {
        ok: 0,
        latencies_us: Vec::with_capacity(if rules.cycle {
            1 << 16
        } else {
            p.signatures.len().min(1 << 20)
        }),
        error: None,
    };
    let connected = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connect {authority}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok::<_, String>(sender)
    }
    .await;
    // Everyone meets at the barrier, connected or not, so the run never hangs.
    start.wait().await;
    let mut sender = match connected {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e);
            return out;
        }
    };
    let n = p.signatures.len();
    let mut k = 0usize;
    loop {
        if stop.load(Ordering::Relaxed) {
            return out;
        }
        if k == n {
            if rules.cycle && n > 0 {
                k = 0;
            } else {
                break;
            }
        }
        let header = p
            .template
            .render(p.first_max + k as u128 * rules.step, &p.signatures[k]);
        k += 1;
        let req = match http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(PAYMENT_SIGNATURE, header)
            .body(Empty::<Bytes>::new())
        {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(format!("request: {e}"));
                return out;
            }
        };
        let t = Instant::now();
        let res = match sender.ready().await {
            Ok(()) => sender.send_request(req).await,
            Err(e) => Err(e),
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                out.error = Some(format!("transport: {e}"));
                return out;
            }
        };
        let status = res.status();
        let paid = res.headers().contains_key(PAYMENT_RESPONSE);
        let reason = res
            .headers()
            .get(PAYMENT_REQUIRED)
            .and_then(|h| decode_header::<PaymentRequired>(h.as_bytes(), 64 * 1024).ok())
            .and_then(|r| r.error);
        let body = match res.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                out.error = Some(format!("body: {e}"));
                return out;
            }
        };
        out.latencies_us
            .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        if status != http::StatusCode::OK || (rules.must_be_paid && !paid) {
            // The voucher was not charged, so every later presigned voucher is off by one
            // charge: this client stops and the run is reported as failed.
            out.error = Some(format!(
                "HTTP {status}{} after {} ok: {}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                out.ok,
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ));
            return out;
        }
        out.ok += 1;
    }
    // Out of presigned vouchers: end the window for everyone, so that the rate is always
    // measured with all C clients active.
    exhausted.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    out
}
