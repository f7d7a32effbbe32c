//! The payment metrics the layer records reach a Prometheus recorder: accepted payments by
//! kind, refusals by reason code, paid requests, the charged sum and the payment overhead.
//! One test in this binary: the recorder is process-global.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

use axum::http::StatusCode;
use support::Fixture;
use x402_upto::telemetry;

#[tokio::test]
async fn payments_refusals_charges_and_overhead_are_recorded() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder in this process");
    let f = Fixture::new().await;
    let config = f.config(1);

    // A deposit with its voucher, then two vouchers: 300 + 400 + 0 charged.
    f.send_ok(
        "/paid?charge=300",
        &f.deposit_payload(&config, 1000, 10_000),
    )
    .await;
    f.send_ok("/paid?charge=400", &f.voucher_payload(&config, 1300))
        .await;
    f.send_ok("/paid?charge=0", &f.voucher_payload(&config, 1700))
        .await;
    // A replay of an older voucher: a cumulative mismatch, refused and counted by reason.
    let a = f
        .send("/paid?charge=0", &f.voucher_payload(&config, 1300))
        .await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    let reason = a.reason();
    // An unpaid request is an offer, not a refusal.
    assert_eq!(
        f.send_raw("/paid", None).await.status,
        StatusCode::PAYMENT_REQUIRED
    );

    let text = handle.render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in:\n{text}"))
            .to_owned()
    };
    let value = |prefix: &str| -> f64 {
        line(prefix)
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    let accepted = telemetry::PAYMENTS_ACCEPTED;
    assert_eq!(value(&format!("{accepted}{{kind=\"deposit\"}}")), 1.0);
    assert_eq!(value(&format!("{accepted}{{kind=\"voucher\"}}")), 2.0);
    let rejected = telemetry::PAYMENTS_REJECTED;
    assert_eq!(value(&format!("{rejected}{{reason=\"{reason}\"}}")), 1.0);
    assert_eq!(
        text.lines().filter(|l| l.starts_with(rejected)).count(),
        1,
        "only the replay is a refusal:\n{text}"
    );
    assert_eq!(value(&format!("{} ", telemetry::PAID_REQUESTS)), 3.0);
    assert_eq!(value(&format!("{} ", telemetry::CHARGED)), 700.0);
    assert_eq!(
        value(&format!("{}_count ", telemetry::PAYMENT_OVERHEAD)),
        3.0
    );
    assert!(value(&format!("{}_sum ", telemetry::PAYMENT_OVERHEAD)) > 0.0);
}
