//! The admin dashboard in a real headless browser (Chromium from the Debian packages,
//! `scripts/chromium.sh`): the page is loaded against `serve` on anvil after real paid
//! requests, a refusal and a claim, and the numbers it shows (their `data-value`s) must be
//! the API's and the chain's. Saves a screenshot (`docs/admin-dashboard.png` is one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::providers::Provider;

use crate::admin_api::{AdminRig, TOKEN, id_of, pay};

/// The Chromium binary: `X402_CHROMIUM`, else `chromium` or `chromium-browser` on `PATH`.
/// Missing, the test fails and says how to install it (never skips).
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("X402_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let bin = dir.join(name);
            if bin.is_file() {
                return bin;
            }
        }
    }
    panic!(
        "Chromium is missing: the dashboard test needs a headless browser. Run \
         `bash scripts/chromium.sh` (installs the Debian `chromium` package), or set \
         X402_CHROMIUM to its path"
    );
}

/// Runs headless Chromium on `url` with `args`, letting the page's timers run for `budget`
/// of virtual time (it waits for network fetches in flight). Returns stdout.
async fn headless(profile: &Path, url: &str, args: &[String], budget: Duration) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={}", budget.as_millis()))
            .args(args)
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finishes")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of attribute `name` on the start tag that contains `marker`.
fn attr(dom: &str, marker: &str, name: &str) -> Option<String> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{name}=\"");
    let v = tag.find(&key)? + key.len();
    let len = tag[v..].find('"')?;
    Some(tag[v..v + len].to_owned())
}

/// The `data-value` of the element with id `id`.
fn shown(dom: &str, id: &str) -> String {
    attr(dom, &format!("id=\"{id}\""), "data-value")
        .unwrap_or_else(|| panic!("#{id} not in the page:\n{dom}"))
}

/// The body rows of table `id`, each as its markup.
fn rows<'a>(dom: &'a str, id: &str) -> Vec<&'a str> {
    let at = dom
        .find(&format!("<table id=\"{id}\""))
        .unwrap_or_else(|| panic!("table {id} missing"));
    let table = &dom[at..at + dom[at..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    body.split("<tr").skip(1).collect()
}

/// The `data-value` of the cell `data-field="field"` in `row`.
fn cell(row: &str, field: &str) -> String {
    attr(row, &format!("data-field=\"{field}\""), "data-value")
        .unwrap_or_else(|| panic!("no {field} in {row}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_and_the_chain_say() {
    let rig = AdminRig::start(&[3, 4]).await;
    let escrow = rig.chain.escrow_client();
    let pay_to = rig.chain.net.key(7).unwrap().address();
    let (p3, p4) = (rig.payer(3), rig.payer(4));
    pay(&p3, &rig.proxy, &[100, 200, 300]).await;
    pay(&p4, &rig.proxy, &[50, 70]).await;
    // One refusal (a blocked payer), then a claim, then more charges left unclaimed.
    assert_eq!(
        rig.post(&format!("/payers/{}/block", rig.address(4)))
            .await
            .0,
        200
    );
    assert!(p4.get(&format!("{}/v1/work/30", rig.proxy)).await.is_err());
    assert_eq!(
        rig.post(&format!("/payers/{}/unblock", rig.address(4)))
            .await
            .0,
        200
    );
    pay(&p4, &rig.proxy, &[30]).await;
    assert_eq!(rig.post("/claim").await.0, 200);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(rig.post("/sweep").await.1["swept"], "750");
    pay(&p3, &rig.proxy, &[400]).await;
    pay(&p4, &rig.proxy, &[5]).await;
    // Payer 4 starts its timed withdrawal: the watcher sees it, the settler claims the
    // channel at once, and the page lists its deadline.
    let id4 = p4.channels()[0].channel_id;
    p4.withdraw(&rig.chain.rpc, id4, false).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c4 = rig.channel_of(4).await;
        if c4["withdrawal"]["state"] == "pending" && c4["unclaimed"] == "0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "withdrawal not claimed: {c4}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few samples for the chart (one a second).
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let (_, totals) = rig.get("/totals").await;
    let (_, activity) = rig.get("/activity").await;
    let (_, channels) = rig.get("/channels").await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("{}/#token={TOKEN}", rig.admin);
    let dom = headless(
        profile.path(),
        &url,
        &["--dump-dom".to_owned()],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        attr(&dom, "<body", "data-state").as_deref(),
        Some("live"),
        "{dom}"
    );

    // Totals: the API's, and the revenue is the chain's.
    let (claimed, swept) = escrow
        .receiver_totals(pay_to, rig.chain.token)
        .await
        .unwrap();
    assert_eq!(shown(&dom, "revenue-claimed"), claimed.to_string());
    assert_eq!(shown(&dom, "revenue-claimed"), "755");
    assert_eq!(shown(&dom, "revenue-swept"), swept.to_string());
    assert_eq!(swept, 750);
    for (id, key) in [
        ("revenue-claimed", "/revenue/claimed"),
        ("unclaimed", "/unclaimed"),
        ("charged", "/charged"),
        ("balance", "/balance"),
        ("at-risk", "/unclaimed_at_risk"),
    ] {
        assert_eq!(
            shown(&dom, id),
            totals.pointer(key).unwrap().as_str().unwrap(),
            "{id}"
        );
    }
    assert_eq!(shown(&dom, "unclaimed"), "400");
    assert_eq!(shown(&dom, "charged"), "1155");
    assert_eq!(shown(&dom, "channels-count"), "2");
    assert_eq!(
        shown(&dom, "paid-requests"),
        totals["paid_requests"].to_string()
    );
    assert_eq!(shown(&dom, "paid-requests"), "8");

    // The channel table: every row's claimed and balance are the chain's.
    let shown_rows = rows(&dom, "channels");
    assert_eq!(
        shown_rows.len(),
        channels["total"].as_u64().unwrap() as usize
    );
    for (row, api) in shown_rows
        .iter()
        .zip(channels["channels"].as_array().unwrap())
    {
        let chain = escrow.channel_state(id_of(api)).await.unwrap();
        assert_eq!(cell(row, "claimed"), chain.total_claimed.to_string());
        assert_eq!(cell(row, "balance"), chain.balance.to_string());
        assert_eq!(cell(row, "charged"), api["charged"].as_str().unwrap());
        assert_eq!(cell(row, "unclaimed"), api["unclaimed"].as_str().unwrap());
    }

    // Exposure against deadlines: payer 4's withdrawal, its deadline the chain's.
    let deadlines = rows(&dom, "deadlines");
    assert_eq!(deadlines.len(), 1);
    let state4 = escrow.channel_state(id4).await.unwrap();
    let delay = p4.channels()[0].config.withdraw_delay;
    assert!(deadlines[0].contains(&format!("data-channel-id=\"{id4}\"")));
    assert_eq!(
        cell(deadlines[0], "deadline"),
        (state4.withdraw_requested_at + delay).to_string()
    );
    assert_eq!(cell(deadlines[0], "unclaimed"), "0");
    assert_eq!(state4.total_claimed, 155);

    // The claim batches (the one asked for, then the withdrawal's): gas and fee are the
    // receipts', gas per paid request as the API says (6 paid requests, then 2).
    let claims = rows(&dom, "claims");
    assert_eq!(claims.len(), 2);
    for (row, (api, paid)) in claims
        .iter()
        .zip(activity["claims"].as_array().unwrap().iter().zip([2u64, 6]))
    {
        let hash = api["tx_hash"].as_str().unwrap();
        assert!(row.contains(&format!("data-tx=\"{hash}\"")));
        let receipt = escrow
            .provider()
            .get_transaction_receipt(hash.parse().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cell(row, "gas"), receipt.gas_used.to_string());
        assert_eq!(cell(row, "paid-requests"), paid.to_string());
        assert_eq!(
            cell(row, "gas-per-paid-request"),
            (receipt.gas_used / paid).to_string()
        );
        assert_eq!(
            cell(row, "fee"),
            (u128::from(receipt.gas_used) * receipt.effective_gas_price).to_string()
        );
    }

    // Rejections by reason: the blocked payer's one.
    let rejections = rows(&dom, "rejections");
    let blocked = rejections
        .iter()
        .find(|r| r.contains("data-reason=\"invalid_batch_settlement_evm_payer_blocked\""))
        .expect("the payer_blocked row");
    assert_eq!(cell(blocked, "count"), "1");
    assert_eq!(activity["rejections"][0]["count"], 1);

    // The chart has its samples.
    let samples: usize = attr(&dom, "id=\"revenue-chart\"", "data-samples")
        .unwrap()
        .parse()
        .unwrap();
    assert!(samples >= 2, "{samples} samples");
    assert!(dom.contains("<polyline"));
    // Its newest point: the chain's totals and the API's exposure.
    let chart =
        |key: &str| attr(&dom, "id=\"revenue-chart\"", &format!("data-last-{key}")).unwrap();
    assert_eq!(chart("claimed"), claimed.to_string());
    assert_eq!(chart("swept"), swept.to_string());
    assert_eq!(chart("unclaimed"), "400");
    assert_eq!(chart("earned"), (claimed + 400).to_string());

    // A wrong token shows no data.
    let wrong = headless(
        profile.path(),
        &format!("{}/#token=not-the-token-not-the-token", rig.admin),
        &["--dump-dom".to_owned()],
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        attr(&wrong, "<body", "data-state").as_deref(),
        Some("error")
    );
    assert_eq!(shown(&wrong, "revenue-claimed"), "");

    // The screenshot docs/operations.md shows (docs/admin-dashboard.png is a copy of one).
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-dashboard.png");
    let _ = std::fs::remove_file(&png);
    headless(
        profile.path(),
        &url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1160".to_owned(),
        ],
        Duration::from_secs(5),
    )
    .await;
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    eprintln!("dashboard screenshot: {}", png.display());
}
