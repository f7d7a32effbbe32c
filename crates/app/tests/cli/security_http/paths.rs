//! The price is decided on exactly the path the upstream receives.

use serde_json::json;

use super::rig::{PAID, PRICEY, Proxy};
use super::support::config_json;

/// What a lenient origin serves for a target it receives: every escape decoded, `\` as `/`,
/// `;params` dropped, dot segments resolved, `//` merged, case ignored (nginx, IIS, Tomcat
/// and friends each do some of this).
fn lenient(target: &str) -> String {
    let path = target.split('?').next().unwrap_or("");
    let mut decoded = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = path
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<String> = Vec::new();
    for seg in s.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_ascii_lowercase()),
        }
    }
    format!("/{}", out.join("/"))
}

/// The price a lenient origin's path falls under, if any.
fn price_of(target: &str) -> Option<u128> {
    let p = lenient(target);
    let under = |prefix: &str| p == prefix || p.starts_with(&format!("{prefix}/"));
    if under("/pricey") {
        Some(PRICEY)
    } else if under("/paid") {
        Some(PAID)
    } else {
        None
    }
}

/// Every spelling of a priced path we could think of.
const TARGETS: &[&str] = &[
    "/free/../paid/ok",
    "/free/%2e%2e/paid/ok",
    "/free/%2E%2E/paid/ok",
    "/free/.%2e/paid/ok",
    "/free/%2e./paid/ok",
    "/free/%2e%2E/pricey/ok",
    "/./paid/ok",
    "/%2e/paid/ok",
    "/%2e%2e/paid/ok",
    "/free/./../paid/ok",
    "/free\\..\\paid/ok",
    "/free/..\\paid/ok",
    "/free\\../paid/ok",
    "/x/../pricey/ok",
    "/x/y/../../pricey/ok",
    "/paid/",
    "/paid",
    "/paid?x=1",
    "/paid/?x=1",
    "/paid/.",
    "/paid/x/..",
    "/pricey",
    "/pricey/",
    "/PAID/ok",
    "/Paid/ok",
    "/pRiCeY/ok",
    "/%70aid/ok",
    "/%70%61%69%64/ok",
    "/%50AID/ok",
    "//paid/ok",
    "///paid/ok",
    "//pricey",
    "/paid%2fok",
    "/paid%2Fok",
    "/free%2f..%2fpaid/ok",
    "/free/%2e%2e%2fpaid/ok",
    "/free/..%2fpaid/ok",
    "/free/..%5cpaid/ok",
    "/free/%5c../paid/ok",
    "/paid;x/ok",
    "/paid;/ok",
    "/free/..;/paid/ok",
    "/free/%252e%252e/paid/ok",
    "/free/%25%32%65%25%32%65/paid/ok",
    "/paid%00/ok",
    "/free/%00/../paid/ok",
    "/free/%0a/../paid/ok",
    "/paid%ok",
    "/paid/%zz",
    "/free/%u002e%u002e/paid/ok",
    "/free/%c0%ae%c0%ae/paid/ok",
    "http://localhost/paid/ok",
    "http://localhost/free/../paid/ok",
    "/free?/../paid/ok",
    "/free/..%3Bpaid/ok",
    "*",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_a_priced_path_reaches_the_upstream_unpaid() {
    let proxy = Proxy::start("").await;
    let before = proxy.fixture.state().await;
    let mut refused = 0;
    for target in TARGETS {
        let answer = proxy.get(target, &[]).await;
        let seen = proxy.seen.take();
        for path in &seen {
            assert_eq!(
                price_of(path),
                None,
                "{target:?} reached the upstream as {path:?} unpaid (status {})",
                answer.status
            );
        }
        match answer.status {
            400 | 402 => {
                refused += 1;
                assert!(
                    seen.is_empty(),
                    "{target:?}: refused but forwarded {seen:?}"
                );
            }
            200 => assert_eq!(seen.len(), 1, "{target:?}"),
            s => panic!("{target:?}: unexpected status {s}"),
        }
        if answer.status == 402 {
            // The offer is for the normalised path, and priced by it.
            let required = answer.required();
            let url = required["resource"]["url"].as_str().unwrap();
            let price: u128 = required["accepts"][0]["amount"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let path = url.trim_start_matches("http://localhost");
            assert_eq!(price_of(path), Some(price), "{target:?} → {url}");
        }
    }
    assert!(
        refused >= TARGETS.len() - 4,
        "{refused} of {}",
        TARGETS.len()
    );
    // Sanity: the free fallback still forwards, and exactly the normalised bytes.
    let free = proxy.get("/free/./a/%7e%41/../b?q=%2f%7e", &[]).await;
    assert_eq!(
        free.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&free.body)
    );
    assert_eq!(proxy.seen.take(), ["/free/a/b?q=%2F~"]);
    assert_eq!(proxy.fixture.state().await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_request_reaches_the_upstream_under_the_path_it_paid_for() {
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let config = f.config(1);
    let id = f.fund(&config, 100_000);
    // Paid at /paid's price, through a dot segment: the upstream sees /paid/ok, charged 1000.
    let header = x402_upto::wire::encode_header(&f.voucher_payload(&config, PAID));
    let answer = proxy
        .get("/free/%2e%2e/paid/ok", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(proxy.seen.take(), ["/paid/ok"]);
    assert_eq!(f.engine.ledger().snapshot(&id).unwrap().charged, PAID);

    // A voucher for /paid's price cannot buy /pricey through /paid/x/../../pricey/ok.
    let before = f.state().await;
    let header = x402_upto::wire::encode_header(&f.voucher_payload(&config, 2 * PAID));
    let answer = proxy
        .get("/paid/x/../../pricey/ok", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 402);
    assert_eq!(
        answer.reason(),
        "invalid_payment_requirements",
        "{:?}",
        answer.required()
    );
    assert!(proxy.seen.take().is_empty());
    assert_eq!(f.state().await, before);

    // Paying /pricey's price buys it, and the upstream sees exactly /pricey/ok.
    let voucher = f.voucher_json(&config, PAID + PRICEY);
    let payload = f.payload(
        PRICEY,
        json!({"type": "voucher", "channelConfig": config_json(&config), "voucher": voucher}),
    );
    let header = x402_upto::wire::encode_header(&payload);
    let answer = proxy
        .get("/paid/x/../../pricey/ok", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(proxy.seen.take(), ["/pricey/ok"]);
    assert_eq!(
        f.engine.ledger().snapshot(&id).unwrap().charged,
        PAID + PRICEY
    );
}

#[tokio::test]
async fn route_prefixes_that_are_not_normalised_are_refused_at_start() {
    let (up, _) = super::rig::upstream().await;
    for prefix in ["/a/../paid", "/pa%69d", "/paid;x", "paid", "/a//b"] {
        let toml = format!(
            "listen = \"127.0.0.1:0\"\nupstream = \"{up}\"\nrpc = \"http://x\"\nchain_id = 1\n\
             escrow = \"0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"\n\
             collector = \"0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"\n\
             asset = \"0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"\nasset_name = \"U\"\n\
             asset_version = \"2\"\npay_to = \"0xeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"\n\
             store = \"/x\"\n[[route]]\nprefix = \"{prefix}\"\nprice = 1\n"
        );
        let err = x402_upto_app::serve::ServeConfig::from_toml(&toml).unwrap_err();
        assert!(err.contains("route prefix"), "{prefix}: {err}");
    }
}
