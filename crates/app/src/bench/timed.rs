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
    let connected = connect(authority).await;
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
        let t = Instant::now();
        let answer = match send_voucher(&mut sender, authority, path, header).await {
            Ok(a) => a,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        };
        out.latencies_us
            .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
        if answer.status != http::StatusCode::OK || (rules.must_be_paid && !answer.paid) {
            // The voucher was not charged, so every later presigned voucher is off by one
            // charge: this client stops and the run is reported as failed.
            out.error = Some(answer.failure(out.ok));
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

/// One keep-alive HTTP/1.1 connection to `authority`, without Nagle's delay.
pub(super) async fn connect(
    authority: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A server's answer to one voucher, read whole.
pub(super) struct Answer {
    pub(super) status: http::StatusCode,
    /// It carries a `PAYMENT-RESPONSE`.
    pub(super) paid: bool,
    /// The `error` of a `PAYMENT-REQUIRED` it carries.
    reason: Option<String>,
    body: Bytes,
}

impl Answer {
    /// What a client that stops at this answer reports, after `ok` good ones.
    pub(super) fn failure(&self, ok: u64) -> String {
        format!(
            "HTTP {}{} after {ok} ok: {}",
            self.status,
            self.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            String::from_utf8_lossy(&self.body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    }
}

/// Sends `GET path` with `header` as its `PAYMENT-SIGNATURE` on `sender`'s connection.
pub(super) async fn send_voucher<V>(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    authority: &str,
    path: &str,
    header: V,
) -> Result<Answer, String>
where
    http::HeaderValue: TryFrom<V>,
    <http::HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
{
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(PAYMENT_SIGNATURE, header)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    sender
        .ready()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = res.status();
    let paid = res.headers().contains_key(PAYMENT_RESPONSE);
    let reason = res
        .headers()
        .get(PAYMENT_REQUIRED)
        .and_then(|h| decode_header::<PaymentRequired>(h.as_bytes(), 64 * 1024).ok())
        .and_then(|r| r.error);
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        paid,
        reason,
        body,
    })
}
