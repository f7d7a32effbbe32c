//! Stream renewals pass the same freshness gate as paid requests: a renewal on a channel
//! whose chain mirror is too old is refused (402 `rpc_read_failed`) and changes nothing; the
//! stream keeps its budget and hold, and renews once the watcher has polled again.

use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::routing::get;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;
use x402_upto::Store as _;
use x402_upto::server::{Charge, PaymentLayer, STREAM_ID_HEADER};
use x402_upto::settlement::{Freshness, unix_now};
use x402_upto::wire::encode_header;

use super::server::{Answer, Fixture, PRICE};

/// 25 tokens of 100 each; waits up to 10 s for a renewal when the budget runs out.
async fn gpu(Extension(charge): Extension<Charge>) -> impl axum::response::IntoResponse {
    charge.set(0);
    let stream = futures_util::stream::unfold(0u32, move |i| {
        let charge = charge.clone();
        async move {
            if i >= 25 {
                return None;
            }
            let paid = charge.add_wait(100, Duration::from_secs(10)).await;
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

/// Reads SSE blocks until one whose event is `want`; returns the events read before it.
async fn until(body: &mut Body, buf: &mut String, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            if event == want {
                return seen;
            }
            seen.push(event);
        }
        let frame = body
            .frame()
            .await
            .unwrap_or_else(|| panic!("the stream ended before {want}"))
            .unwrap();
        if let Ok(data) = frame.into_data() {
            buf.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
}

async fn renew(f: &Fixture, stream_id: &str, payload: &Value) -> Answer {
    f.send_request(
        Request::get("/gpu")
            .header("host", "localhost")
            .header(STREAM_ID_HEADER, stream_id)
            .header("PAYMENT-SIGNATURE", encode_header(payload)),
    )
    .await
}

#[tokio::test]
async fn a_renewal_on_a_stale_mirror_is_refused_and_changes_nothing() {
    let mut f = Fixture::new().await;
    let layer = PaymentLayer::fixed(f.engine.clone(), PRICE).streaming();
    f.app = f.app.clone().route("/gpu", get(gpu).layer(layer));
    let freshness = Freshness::new(Duration::from_secs(1));
    assert!(f.engine.set_freshness(freshness.clone()));
    let config = f.config(1);
    let id = f.fund(&config, 10_000);

    // Opened on a mirror read just now: fresh.
    let req = f.paid_request("/gpu", &f.voucher_payload(&config, 1000));
    let res = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let stream_id = res.headers()[STREAM_ID_HEADER].to_str().unwrap().to_owned();
    let mut body = res.into_body();
    let mut buf = String::new();
    let tokens = until(&mut body, &mut buf, "payment-renewal").await;
    assert_eq!(tokens.len(), 8);

    // No read and no watcher poll for more than max_age: the renewal is refused.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let before = f.state().await;
    let reads = f.chain.reads.load(std::sync::atomic::Ordering::SeqCst);
    let a = renew(&f, &stream_id, &f.voucher_payload(&config, 2000)).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{:?}", a.body);
    assert_eq!(a.reason(), "invalid_batch_settlement_evm_rpc_read_failed");
    assert!(a.headers.get("payment-response").is_none());
    assert_eq!(
        f.state().await,
        before,
        "a refused renewal changed the state"
    );
    assert_eq!(
        f.chain.reads.load(std::sync::atomic::Ordering::SeqCst),
        reads
    );
    assert!(f.engine.ledger().is_held(&id), "the stream keeps its hold");

    // The watcher polls successfully: the same renewal goes through.
    freshness.mark(unix_now());
    let a = renew(&f, &stream_id, &f.voucher_payload(&config, 2000)).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let stored = f.engine.store().load(id).await.unwrap().unwrap();
    assert_eq!(stored.signed_max_claimable, 2000);
    // 18 more tokens would need a third budget: the stream stops at 20 after asking again.
    let rest = until(&mut body, &mut buf, "payment-renewal").await;
    assert_eq!(rest.len(), 10);
}
