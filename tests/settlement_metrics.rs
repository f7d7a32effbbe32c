//! The settlement metrics reach the Prometheus endpoint: one claim round and one sweep on
//! anvil, then a scrape of `GET /metrics` (one test in this file: the recorder is global).

use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::B256;
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig};
use x402_upto::telemetry;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};
use x402_upto_testkit::devnet::Devnet;
use x402_upto_testkit::offchain::signed_voucher;

#[tokio::test]
async fn claim_and_sweep_metrics_are_exported_for_prometheus() {
    let port = x402_upto_testkit::free_port();
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .install()
        .expect("exporter");
    telemetry::describe();

    let net = Devnet::start().await.expect("devnet");
    let payer = net.key(1).expect("key");
    let authorizer = net.key(3).expect("key");
    net.mint(payer.address(), 1_000_000).await.expect("mint");
    let config = net.channel_config(
        payer.address(),
        payer.address(),
        net.key(2).expect("key").address(),
        authorizer.address(),
        B256::repeat_byte(1),
    );
    let id = net
        .deposit(&payer, &config, 1_000_000, B256::repeat_byte(1))
        .await
        .expect("deposit");
    let client = Arc::new(net.escrow_client(net.key(5).expect("key"), Some(authorizer)));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
            .expect("store"),
    );
    let ledger = Ledger::new(net.domain());
    ledger.upsert_from_chain(config, client.channel_state(id).await.expect("read"), 0);
    let staged = ledger
        .verify_and_reserve(signed_voucher(&payer, ledger.domain(), id, 10_000), 10_000)
        .expect("accepted")
        .commit(4_000, 1)
        .expect("within price");
    x402_upto::store::persist(store.as_ref(), staged)
        .await
        .expect("durable");
    let s = Settlement::new(
        ledger,
        client,
        ClaimJournal::open(&store).expect("journal"),
        SettlementConfig {
            claim_threshold: 1,
            confirmations: 0,
            ..SettlementConfig::default()
        },
    );
    assert_eq!(s.claim_round(false).await.batches, 1);
    assert_eq!(s.settle_round().await.expect("settle"), 4_000);

    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(r) = reqwest::get(&url).await {
            body = r.text().await.unwrap_or_default();
            if body.contains(telemetry::SETTLED) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in [
        telemetry::CLAIM_BATCHES,
        telemetry::CLAIM_GAS,
        telemetry::CLAIM_ROWS,
        telemetry::UNCLAIMED,
        telemetry::SETTLES,
        telemetry::SETTLED,
        telemetry::SETTLEMENT_LATENCY,
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(body.contains(&format!("{} 4000", telemetry::SETTLED)));
    assert!(body.contains(&format!("{} 1", telemetry::CLAIM_BATCHES)));
}
