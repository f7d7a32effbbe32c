//! The metered `/gpu` handler both stream test modules serve: one SSE `token` event per
//! `PER_TOKEN` charged, metered from zero, so only delivered tokens are charged.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::Query;
use x402_upto::server::Charge;

/// Ten tokens per budget (`PRICE` = 1000).
pub const PER_TOKEN: u128 = 100;

#[derive(serde::Deserialize)]
pub struct Q {
    tokens: u32,
    /// When set, the handler waits this long for a renewal once the budget is used up.
    grace_ms: Option<u64>,
    /// Pause before each token (paces a stream over TCP; lets a renewal race the end of the
    /// budget).
    sleep_us: Option<u64>,
}

pub async fn gpu(
    Extension(charge): Extension<Charge>,
    Query(q): Query<Q>,
) -> impl axum::response::IntoResponse {
    // Metered from zero: only delivered tokens are charged.
    charge.set(0);
    let stream = futures_util::stream::unfold(0u32, move |i| {
        let charge = charge.clone();
        async move {
            if i >= q.tokens {
                return None;
            }
            if let Some(us) = q.sleep_us {
                tokio::time::sleep(Duration::from_micros(us)).await;
            }
            let paid = match q.grace_ms {
                Some(ms) => charge.add_wait(PER_TOKEN, Duration::from_millis(ms)).await,
                None => charge.add(PER_TOKEN),
            };
            paid.then(|| {
                let chunk = Bytes::from(format!("event: token\ndata: {i}\n\n"));
                (Ok::<_, Infallible>(chunk), i + 1)
            })
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
}
