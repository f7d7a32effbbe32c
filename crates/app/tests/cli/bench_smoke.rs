//! `scripts/bench.sh --quick` end to end: anvil, our durable server (on sled, and on a
//! throwaway PostgreSQL with one and two instances), the official
//! `@x402/express` server and the ceiling, a 2-second load at C = 4 on each. Asserts what a
//! benchmark must get right before its numbers mean anything: every request answered 200,
//! every paying server booked exactly one paid response and `charge` per 200 the load
//! generator saw, and the table printed. It asserts nothing about speed (CI machines vary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn quick_bench_is_error_free_and_the_books_match() {
    let root = x402_upto_testkit::workspace_root();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    // The test's own (debug) build of the binary: no release build inside `cargo test`.
    let out = Command::new("bash")
        .arg(root.join("scripts/bench.sh"))
        .args(["--quick", "--", "--json"])
        .arg(&json)
        .env("X402_BENCH_BIN", env!("CARGO_BIN_EXE_x402-upto"))
        .current_dir(root)
        .output()
        .expect("bash scripts/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench.sh --quick failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("| C | target | paid req/s |"), "{stdout}");

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["clean"], true, "{report:#}");
    let charge: u128 = report["settings"]["charge"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let runs = report["runs"].as_array().unwrap();
    let names: Vec<&str> = runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["ceiling", "ours", "ours-pg", "ours-pg2", "stock"],
        "{report:#}"
    );
    for r in runs {
        let name = r["target"].as_str().unwrap();
        assert_eq!(r["errors"], 0, "{name}: {r:#}");
        assert_eq!(r["concurrency"], 4, "{name}");
        let ok = r["ok"].as_u64().unwrap();
        assert!(ok > 0, "{name} served nothing: {r:#}");
        // Latencies come from the requests counted.
        let (p50, p99, max) = (
            r["p50_ms"].as_f64().unwrap(),
            r["p99_ms"].as_f64().unwrap(),
            r["max_ms"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{name}: {r:#}");
        if name == "ceiling" {
            assert!(r["accounting"].is_null(), "the ceiling keeps no books");
            continue;
        }
        // The PostgreSQL rows report the database's work: its commits and its CPU.
        if name.starts_with("ours-pg") {
            assert!(
                r["db_commits_per_s"].as_f64().unwrap() > 0.0,
                "{name}: {r:#}"
            );
            assert!(r["cpu"]["db"].as_f64().is_some(), "{name}: {r:#}");
        }
        // Served count = charged sum / charge, by the server's own books; one warm-up
        // request per channel (the deposit) comes on top of the timed 200s.
        let a = &r["accounting"];
        let served = a["served"].as_u64().unwrap();
        assert_eq!(served, ok + 4, "{name}: {a:#}");
        assert_eq!(a["server_paid"].as_u64().unwrap(), served, "{name}: {a:#}");
        let charged: u128 = match &a["server_charged"] {
            Value::Number(n) => u128::from(n.as_u64().unwrap()),
            other => other.as_str().unwrap().parse().unwrap(),
        };
        assert_eq!(charged, u128::from(served) * charge, "{name}: {a:#}");
        assert_eq!(a["ok"], true, "{name}: {a:#}");
    }
}
