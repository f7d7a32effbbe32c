//! The demo end to end on anvil, small: every paid request is claimed and swept, and the
//! on-chain balances reconcile with the ledger to the last atomic unit.

use x402_upto::demo::{DemoArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_demo_reconciles_on_chain() {
    let args = DemoArgs {
        channels: 4,
        requests: 25,
        price: 1_000,
        deposit: 100_000,
        batch: 3,
        quiet: true,
    };
    let summary = run(&args).await.expect("demo runs");
    assert_eq!(summary.crawl.requests, 100);
    // 4 channels in batches of 3 → 2 claim transactions.
    assert_eq!(summary.claim_txs, 2);
    assert!(summary.crawl.charged <= summary.crawl.signed);
    assert_eq!(
        summary.after.receiver - summary.before.receiver,
        summary.crawl.charged
    );
    summary.reconcile().expect("balances reconcile");
}
