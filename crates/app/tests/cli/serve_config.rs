//! `x402-upto serve`'s TOML settlement knobs: defaults equal the library defaults, every knob
//! is read, unknown keys and values that would spin or stall are refused, and (on anvil) a
//! small `[settlement] claim_threshold` makes the running proxy claim on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::interop as support;

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use support::Chain;
use x402_upto::Durability;
use x402_upto::chain::escrow::DepositConfirmations;
use x402_upto::chain::tx::TxPolicy;
use x402_upto::client::{ClientConfig, PayingClient};
use x402_upto::engine::{ColdReadLimits, RefundLimits};
use x402_upto::settlement::{RefundPolicy, SettlementConfig, WatcherConfig};
use x402_upto::store::DEFAULT_GROUP_LINGER;
use x402_upto_app::serve::{ServeConfig, serve_with};

use crate::serve_process;

/// A complete `serve.toml` without knobs, for `chain_id` and its token.
fn base(chain_id: u64, asset: &str, asset_name: &str) -> String {
    format!(
        r#"
listen = "127.0.0.1:8080"
upstream = "http://127.0.0.1:9000"
rpc = "http://127.0.0.1:8545"
chain_id = {chain_id}
escrow = "0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"
collector = "0x4020806089470a89826cB9fB1f4059150b550004"
asset = "{asset}"
asset_name = "{asset_name}"
asset_version = "2"
pay_to = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
store = "./data/channels"
"#
    )
}

fn parse(extra: &str) -> Result<ServeConfig, String> {
    let base = base(31337, "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "USDC");
    ServeConfig::from_toml(&format!("{base}{extra}"))
}

#[test]
fn a_file_without_knobs_gets_the_library_defaults() {
    let cfg = parse("").unwrap();
    let (s, d) = (cfg.settlement.config(), SettlementConfig::default());
    assert_eq!(s.claim_threshold, d.claim_threshold);
    assert_eq!(s.claim_interval, d.claim_interval);
    assert_eq!(s.batch_size, d.batch_size);
    assert_eq!(s.settle_interval, d.settle_interval);
    assert_eq!(s.tick, d.tick);
    assert_eq!(s.retry_backoff, d.retry_backoff);
    assert_eq!(s.confirmations, d.confirmations);
    let (w, d) = (cfg.watcher.config(), WatcherConfig::default());
    assert_eq!(
        (w.confirmations, w.poll, w.max_range, w.history),
        (d.confirmations, d.poll, d.max_range, d.history)
    );
    let (r, d) = (cfg.refunds.policy(), RefundPolicy::default());
    assert!(cfg.refunds.enabled);
    assert_eq!(cfg.refunds.every_secs, 60);
    assert_eq!(
        (r.idle_after, r.only_when_claimed),
        (d.idle_after, d.only_when_claimed)
    );
    let (t, d) = (cfg.tx.policy(), TxPolicy::default());
    assert_eq!(
        (
            t.max_fee_cap,
            t.priority_fee_cap,
            t.bump_percent,
            t.gas_margin_percent
        ),
        (
            d.max_fee_cap,
            d.priority_fee_cap,
            d.bump_percent,
            d.gas_margin_percent
        )
    );
    assert_eq!(
        (t.attempt_timeout, t.total_timeout, t.poll_interval),
        (d.attempt_timeout, d.total_timeout, d.poll_interval)
    );
    assert_eq!(cfg.watcher.max_staleness_secs, 300);
    assert_eq!(cfg.cold_reads.limits(), ColdReadLimits::default());
    let store = cfg.store_options();
    assert_eq!(store.durability, Durability::Group);
    assert!(store.fdatasync);
    assert_eq!(store.group_linger, DEFAULT_GROUP_LINGER);
}

#[test]
fn every_knob_is_read() {
    let cfg = parse(
        r#"
durability = "every"
fdatasync = false
group_linger_us = 50
[settlement]
claim_threshold = "340282366920938463463374607431768211455"
claim_interval_secs = 600
batch_size = 25
settle_interval_secs = 7200
tick_ms = 250
retry_backoff_secs = 30
confirmations = 12
[refunds]
enabled = false
idle_after_secs = 3600
only_when_claimed = true
every_secs = 120
[watcher]
confirmations = 5
poll_ms = 1500
max_range = 500
history = 16
max_staleness_secs = 120
[tx]
max_fee_cap_wei = 50000000000
priority_fee_cap_wei = "2000000000"
bump_percent = 15
gas_margin_percent = 40
attempt_timeout_secs = 20
total_timeout_secs = 120
poll_interval_ms = 300
[cold_reads]
per_second = 5
burst = 10
negative_ttl_secs = 60
negative_capacity = 99
erc1271_backoff_ms = 2500
"#,
    )
    .unwrap();
    let s = cfg.settlement.config();
    assert_eq!(s.claim_threshold, u128::MAX);
    assert_eq!(s.claim_interval, Duration::from_secs(600));
    assert_eq!(s.batch_size, 25);
    assert_eq!(s.settle_interval, Duration::from_secs(7200));
    assert_eq!(s.tick, Duration::from_millis(250));
    assert_eq!(s.retry_backoff, Duration::from_secs(30));
    assert_eq!(s.confirmations, 12);
    assert!(!cfg.refunds.enabled);
    let r = cfg.refunds.policy();
    assert_eq!(r.idle_after, Duration::from_secs(3600));
    assert!(r.only_when_claimed);
    assert_eq!(cfg.refunds.every_secs, 120);
    let w = cfg.watcher.config();
    assert_eq!(
        (w.confirmations, w.poll, w.max_range, w.history),
        (5, Duration::from_millis(1500), 500, 16)
    );
    assert_eq!(cfg.watcher.max_staleness_secs, 120);
    let t = cfg.tx.policy();
    assert_eq!(
        (
            t.max_fee_cap,
            t.priority_fee_cap,
            t.bump_percent,
            t.gas_margin_percent
        ),
        (50_000_000_000, 2_000_000_000, 15, 40)
    );
    assert_eq!(
        (t.attempt_timeout, t.total_timeout, t.poll_interval),
        (
            Duration::from_secs(20),
            Duration::from_secs(120),
            Duration::from_millis(300)
        )
    );
    assert_eq!(
        cfg.cold_reads.limits(),
        ColdReadLimits {
            per_second: 5,
            burst: 10,
            negative_ttl: Duration::from_secs(60),
            negative_capacity: 99,
            erc1271_backoff: Duration::from_millis(2500),
        }
    );
    let store = cfg.store_options();
    assert_eq!(store.durability, Durability::Every);
    assert!(!store.fdatasync);
    assert_eq!(store.group_linger, Duration::from_micros(50));
}

#[test]
fn unknown_keys_and_malformed_amounts_are_refused() {
    for (extra, needle) in [
        ("[settlement]\nclaim_treshold = 5\n", "claim_treshold"),
        ("[watcher]\npoll = 5\n", "poll"),
        ("[refunds]\nidle_after = 5\n", "idle_after"),
        ("[tx]\nmax_fee_cap = 5\n", "max_fee_cap"),
        ("[cold_reads]\nrate = 5\n", "rate"),
        ("[scheduler]\nbatch_size = 5\n", "scheduler"),
        ("claim_threshold = 5\n", "claim_threshold"),
        (
            "[settlement]\nclaim_threshold = \"1e6\"\n",
            "not a decimal amount",
        ),
        ("[settlement]\nclaim_threshold = -1\n", "claim_threshold"),
        (
            "[settlement]\nclaim_threshold = \"340282366920938463463374607431768211456\"\n",
            "128 bits",
        ),
    ] {
        let err = parse(extra).expect_err(extra);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

#[test]
fn values_that_would_spin_or_stall_are_refused() {
    for (extra, needle) in [
        ("[settlement]\nbatch_size = 0\n", "batch_size"),
        ("[settlement]\ntick_ms = 0\n", "tick_ms"),
        (
            "[settlement]\nclaim_interval_secs = 0\n",
            "claim_interval_secs",
        ),
        (
            "[settlement]\nsettle_interval_secs = 0\n",
            "settle_interval_secs",
        ),
        ("[refunds]\nevery_secs = 0\n", "refunds.every_secs"),
        ("[watcher]\npoll_ms = 0\n", "poll_ms"),
        ("[watcher]\nmax_range = 0\n", "max_range"),
        ("[watcher]\nhistory = 0\n", "history"),
        (
            "[watcher]\npoll_ms = 2000\nmax_staleness_secs = 3\n",
            "max_staleness_secs",
        ),
        (
            "[watcher]\nmax_staleness_secs = 900\n",
            "below withdraw_delay",
        ),
        ("[tx]\nbump_percent = 5\n", "bump_percent"),
        (
            "[tx]\nattempt_timeout_secs = 60\ntotal_timeout_secs = 30\n",
            "total_timeout_secs",
        ),
        ("[tx]\npoll_interval_ms = 0\n", "poll_interval_ms"),
        ("[cold_reads]\nburst = 0\n", "burst"),
        ("min_deposit = \"1e6\"\n", "min_deposit"),
    ] {
        let err = parse(extra).expect_err(extra);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    assert!(parse("[watcher]\nmax_staleness_secs = 0\n").is_ok());
    // Refunds switched off need no refund timing.
    assert!(parse("[refunds]\nenabled = false\nevery_secs = 0\n").is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_claim_threshold_makes_the_running_proxy_claim() {
    let chain = Chain::plain(&[3]).await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        let app = Router::new().route(
            "/api/{n}",
            get(|Path(n): Path<u64>| async move { ([("x-upto-charge", n.to_string())], "ok") }),
        );
        let _ = axum::serve(upstream, app).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let toml = chain.serve_toml(
        "127.0.0.1:0",
        &upstream_url,
        &dir.path().join("channels").display().to_string(),
    ) + r#"[[route]]
prefix = "/api/"
price = 1000
[settlement]
claim_threshold = 500
tick_ms = 100
confirmations = 0
[refunds]
enabled = false
[watcher]
poll_ms = 200
confirmations = 0
# anvil mines only on transactions: no blocks would come to confirm a deposit.
[deposits]
confirmations = 0
"#;
    let cfg = ServeConfig::from_toml(&toml).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_with(
        cfg,
        chain.net.key(1).unwrap(),
        chain.net.key(2).unwrap(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let client = PayingClient::new(
        ClientConfig::new(chain.net.key(3).unwrap()).with_contracts(chain.escrow, chain.collector),
    );
    // 300 charged: below the threshold, nothing is claimed.
    let a = client.get(&format!("{proxy}/api/300")).await.unwrap();
    assert_eq!(a.charged(), Some(300));
    let id = client.channels()[0].channel_id;
    let escrow = chain.escrow_client();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(escrow.channel_state(id).await.unwrap().total_claimed, 0);
    // 300 more: 600 unclaimed ≥ 500, the scheduler claims within a few ticks.
    let a = client.get(&format!("{proxy}/api/300")).await.unwrap();
    assert_eq!(a.charged(), Some(300));
    let mut claimed = 0;
    for _ in 0..100 {
        claimed = escrow.channel_state(id).await.unwrap().total_claimed;
        if claimed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(claimed, 600);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_gracefully_on_sigterm() {
    let chain = Chain::plain(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (config, port) = serve_process::write_config(&chain, dir.path(), "http://127.0.0.1:9", "");
    let mut server = serve_process::spawn(&chain, &config);
    // Listening once any HTTP answer comes back (the upstream is down: 502).
    let url = format!("http://127.0.0.1:{port}/health");
    assert!(
        serve_process::answers(&url, 400).await,
        "serve did not start"
    );
    let pid = server.id().unwrap().to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    // Killed by the signal, the status would carry no exit code; a graceful stop exits 0.
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("serve exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// `serve`'s `[refunds]` knobs: defaults are the engine's, both are read, and a rate of 0
/// (which would refuse every refund) is refused at start-up.
#[test]
fn serve_reads_the_refund_limits_from_its_refunds_section() {
    let d = parse("").unwrap().refunds.limits();
    assert_eq!(d, RefundLimits::default());
    assert_eq!((d.min_partial, d.max_per_window), (1_000, 4));
    let cfg =
        parse("[refunds]\nmin_partial_amount = 25000\nmax_per_channel_per_hour = 1\n").unwrap();
    assert_eq!(
        cfg.refunds.limits(),
        RefundLimits {
            min_partial: 25_000,
            max_per_window: 1,
            window: Duration::from_secs(3_600),
        }
    );
    assert!(
        parse("[refunds]\nmin_partial_amount = 0\n").is_ok(),
        "0: no minimum"
    );
    let err = parse("[refunds]\nmax_per_channel_per_hour = 0\n").unwrap_err();
    assert!(err.contains("refunds.max_per_channel_per_hour"), "{err}");
    assert!(
        parse("[refunds]\nmin_partial = 5\n").is_err(),
        "unknown key"
    );
    assert!(parse("[refunds]\nmin_partial_amount = -1\n").is_err());
}

/// Base mainnet with its USDC.
fn deposits_base() -> String {
    base(
        8453,
        "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
        "USD Coin",
    )
}

#[test]
fn the_deposits_table_defaults_to_two_blocks_and_refuses_a_wait_that_cannot_end() {
    let base = deposits_base();
    let cfg = ServeConfig::from_toml(&base).unwrap();
    assert_eq!(
        cfg.deposits.policy(),
        DepositConfirmations {
            blocks: 2,
            timeout: Duration::from_secs(20),
            poll: Duration::from_millis(250),
        }
    );
    let cfg = ServeConfig::from_toml(&format!(
        "{base}[deposits]\nconfirmations = 12\ntimeout_secs = 300\npoll_ms = 2000\n"
    ))
    .unwrap();
    assert_eq!(
        cfg.deposits.policy(),
        DepositConfirmations {
            blocks: 12,
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(2),
        }
    );
    let off = ServeConfig::from_toml(&format!("{base}[deposits]\nconfirmations = 0\n"));
    assert_eq!(off.unwrap().deposits.policy().blocks, 0);
    for (extra, needle) in [
        ("[deposits]\ntimeout_secs = 0\n", "deposits.timeout_secs"),
        ("[deposits]\npoll_ms = 0\n", "deposits.poll_ms"),
        ("[deposits]\nconfirmation = 3\n", "confirmation"),
    ] {
        let err = ServeConfig::from_toml(&format!("{base}{extra}")).unwrap_err();
        assert!(err.contains(needle), "{extra}: {err}");
    }
}

#[test]
fn the_readme_token_route_parses_and_routes_are_fixed_or_by_tokens() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let block = readme
        .split("```toml\n")
        .find(|b| b.contains("tokens = \"openai\""))
        .and_then(|b| b.split("```").next())
        .expect("README: the token route example");
    let cfg = parse(block).unwrap();
    let route = &cfg.routes[0];
    assert_eq!(route.tokens, Some(x402_upto_app::serve::TokenApi::OpenAi));
    assert_eq!((route.price, route.models.len()), (None, 2));
    assert_eq!(route.models["gpt-4o-mini"].output, 600_000);
    for (extra, needle) in [
        (
            "[[route]]\nprefix = \"/v1/\"\ntokens = \"openai\"\nprice = 5\n[route.models]\nm = { input = 1, output = 1 }\n",
            "not by price",
        ),
        (
            "[[route]]\nprefix = \"/v1/\"\ntokens = \"openai\"\n",
            "models",
        ),
        ("[[route]]\nprefix = \"/v1/\"\n", "needs a price"),
        (
            "[[route]]\nprefix = \"/v1/\"\ntokens = \"gemini\"\n",
            "gemini",
        ),
        (
            "[[route]]\nprefix = \"/v1/\"\ntokens = \"openai\"\n[route.models]\nm = { input = 1 }\n",
            "output",
        ),
    ] {
        let err = parse(extra).expect_err(extra);
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}
