//! `docs/grafana/x402-upto.json` queries only metrics `serve` exports: every metric name in
//! its PromQL is found in a real `/metrics` scrape of a `serve` process on anvil that has
//! served paid, free, refused and rate-limited requests, claimed, swept and reloaded. The few
//! metrics only a PostgreSQL store or a failing RPC produces are named, and each must be one
//! of the library's metric names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::Chain;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::wire::PAYMENT_SIGNATURE;

use crate::serve_process;

const DASHBOARD: &str = include_str!("../../../../docs/grafana/x402-upto.json");
const LIBRARY_NAMES: &str = include_str!("../../../../src/telemetry.rs");

/// Exported only under conditions this run does not create: an RPC failure, a store outage,
/// several instances on PostgreSQL. (The store's group-commit metrics are not here: the
/// default sled store exports them too.)
const CONDITIONAL: [&str; 4] = [
    "x402_rpc_errors_total",
    "x402_store_unavailable_total",
    "x402_cache_reloads_total",
    "x402_settler",
];

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn expressions(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // Grafana's `label_values(metric, label)`: the metric is the selector.
            let q = q
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split(',').next())
                .unwrap_or(q);
            out.push(q.to_owned());
        }
    }
    out
}

/// PromQL words that are not metric names.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    // Aggregations, which may come before their `by (…)` rather than their `(`.
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Whether `name` (as queried: a summary's `_sum` and `_count` included) is one of the
/// [`CONDITIONAL`] metrics.
fn conditional(name: &str) -> bool {
    let base = name
        .strip_suffix("_sum")
        .or_else(|| name.strip_suffix("_count"))
        .unwrap_or(name);
    CONDITIONAL.contains(&base)
}

/// The metric names an expression selects: identifiers outside label matchers, string
/// literals, ranges and variables, that are neither functions (followed by `(`), keywords,
/// nor the label lists of `by (…)` / `without (…)` and the like.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' => {
                let close = if c == b'{' { b'}' } else { b']' };
                while i < b.len() && b[i] != close {
                    if b[i] == b'"' {
                        i += 1;
                        while i < b.len() && b[i] != b'"' {
                            i += if b[i] == b'\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_{}".contains(&b[i])) {
                    i += 1;
                }
            }
            b'(' if skip_list => {
                // A label list: `by (kind, reason)`.
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                i += 1;
                skip_list = false;
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b"_:".contains(&b[i])) {
                    i += 1;
                }
                let word = &expr[start..i];
                let next = expr[i..].trim_start().bytes().next();
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    skip_list = true;
                } else if next == Some(b'(') || KEYWORDS.contains(&lower.as_str()) {
                    // A function or a keyword.
                } else if start > 0 && b[start - 1].is_ascii_digit() {
                    // The exponent or unit of a number (`1e6`, `5m`).
                } else {
                    names.insert(word.to_owned());
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_names_are_read_from_selectors_only() {
    let names = metric_names(
        r#"sum by (kind, reason) (rate(a_total{x="y{z}", q=~"0.5|0.9"}[$__rate_interval])) / on (i) group_left (j) max without (k) (b_sum offset 5m) * 1e6 + histogram_quantile(0.9, c) > bool 2"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["a_total", "b_sum", "c"]
    );
}

/// The names of the samples of a Prometheus text scrape.
fn scraped(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

async fn raw(port: u16, request: &[u8]) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let wanted: BTreeSet<String> = expressions(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    assert!(wanted.len() >= 20, "{wanted:?}");
    for name in CONDITIONAL {
        assert!(
            wanted.iter().any(|w| w.starts_with(name)),
            "{name} is no longer on the dashboard"
        );
        // Stripped of a summary's suffix, a constant of the library.
        assert!(
            LIBRARY_NAMES.contains(&format!("\"{name}\"")),
            "{name} is not a metric name of src/telemetry.rs"
        );
    }

    let chain = Chain::plain(&[3]).await;
    let upstream = {
        let app = Router::new()
            .route(
                "/api/bad",
                get(|| async { ([("x-upto-charge", "lots")], "bad") }),
            )
            .fallback(get(|| async { "ok" }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = x402_upto_testkit::free_port();
    let extra = format!(
        r#"metrics_listen = "127.0.0.1:{metrics_port}"
[settlement]
claim_interval_secs = 1
settle_interval_secs = 1
tick_ms = 100
confirmations = 0
[refunds]
enabled = false
[watcher]
poll_ms = 200
confirmations = 0
[deposits]
confirmations = 0
[http]
header_read_timeout_secs = 1
[limits]
trusted_proxies = ["127.0.0.1"]
max_tracked = 16
[[route]]
prefix = "/api/"
price = 1000
[[route]]
prefix = "/free/"
price = 1000
free_tier = {{ requests = 1, period_secs = 3600 }}
[[route]]
prefix = "/limited/"
price = 1000
limits = {{ ip = {{ rate = 0.01, burst = 1 }} }}
"#
    );
    let (config, port) = serve_process::write_config(&chain, dir.path(), &upstream, &extra);
    let mut child = serve_process::spawn(&chain, &config);
    let proxy = format!("http://127.0.0.1:{port}");
    assert!(serve_process::answers(&format!("{proxy}/health"), 200).await);

    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    );
    for _ in 0..3 {
        assert_eq!(
            client
                .get(&format!("{proxy}/api/x"))
                .await
                .unwrap()
                .charged(),
            Some(1000)
        );
    }
    assert_eq!(
        client
            .get(&format!("{proxy}/free/x"))
            .await
            .unwrap()
            .charged(),
        Some(0)
    );
    assert_eq!(
        client
            .get(&format!("{proxy}/api/bad"))
            .await
            .unwrap()
            .status,
        502
    );
    let http = reqwest::Client::new();
    let rejected = http
        .get(format!("{proxy}/api/x"))
        .header(PAYMENT_SIGNATURE, "not base64!")
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 402);
    // Addresses rotated through a trusted proxy: more buckets than max_tracked (evictions),
    // and one address twice (429).
    for i in 0..40 {
        let r = http
            .get(format!("{proxy}/limited/x"))
            .header("x-forwarded-for", format!("10.9.0.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 402);
    }
    let limited = http
        .get(format!("{proxy}/limited/x"))
        .header("x-forwarded-for", "10.9.0.39")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    let refused = raw(port, b"GET /api/a%2Fb HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    // A header that never ends: closed by the header-read timeout (1 s).
    let _ = raw(port, b"GET /api/x HTTP/1.1\r\nhost: loc").await;
    // A reload of the same file.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );

    // Claims and sweeps come within a few scheduler rounds.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut missing = Vec::new();
    for _ in 0..200 {
        let exported = scraped(&reqwest::get(&url).await.unwrap().text().await.unwrap());
        missing = wanted
            .iter()
            .filter(|n| !exported.contains(*n) && !conditional(n))
            .cloned()
            .collect();
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics serve did not export: {missing:?}"
    );
    child.kill().await.unwrap();
}
