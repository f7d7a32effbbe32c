//! `x402-upto bench-scale` end to end at toy sizes: seed two stores, start a server on each,
//! load both, claim on anvil. Asserts what the scale table needs before its numbers mean
//! anything: every server restored every seeded channel and booked exactly what was served,
//! every window was error-free, the claims all landed on chain, and the plot was written.
//! Nothing about speed or memory (CI machines vary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_scale_restores_every_channel_books_exactly_and_claims_them() {
    let dir = tempfile::tempdir().unwrap();
    let (json, svg) = (dir.path().join("scale.json"), dir.path().join("scale.svg"));
    let out = Command::new(env!("CARGO_BIN_EXE_x402-upto"))
        .args([
            "bench-scale",
            "--channels",
            "64,256",
            "--concurrency",
            "4",
            "--duration",
            "0.5",
            "--rounds",
            "2",
            "--budget-rate",
            "2000",
            "--claims",
            "120",
            "--claim-batch",
            "50",
            "--seed-cache",
        ])
        .arg(dir.path().join("seeds"))
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .env(
            "X402_UPTO_ANVIL",
            x402_upto_testkit::devnet::Devnet::anvil_path().unwrap(),
        )
        .output()
        .expect("x402-upto bench-scale");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench-scale failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("| channels | store on disk |"), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let sizes = report["sizes"].as_array().unwrap();
    let channels: Vec<u64> = sizes
        .iter()
        .map(|s| s["channels"].as_u64().unwrap())
        .collect();
    assert_eq!(channels, [64, 256]);
    for s in sizes {
        // The books cover every restored channel: N seeded charges plus one per 200 served.
        assert_eq!(s["books_ok"], true, "{s:#}");
        let windows = s["windows"].as_array().unwrap();
        assert_eq!(windows.len(), 2);
        for w in windows {
            assert_eq!(w["errors"], 0, "{w:#}");
            assert!(w["ok"].as_u64().unwrap() > 0, "{w:#}");
        }
        assert!(s["rss_after"].as_u64().unwrap() >= s["rss_before"].as_u64().unwrap());
    }
    let claims = report["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 1);
    let c = &claims[0];
    assert_eq!(c["channels"], 120);
    assert_eq!(c["claim_txs"], 3, "120 rows in batches of 50: {c:#}");
    assert_eq!(c["failed_rows"], 0, "{c:#}");
    assert_eq!(c["verified"][0], c["verified"][1], "{c:#}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.matches("<polyline").count() == 2,
        "{plot}"
    );
}
