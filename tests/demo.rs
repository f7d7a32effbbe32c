//! The demo end to end on anvil, small: paying clients over HTTP, every paid request claimed
//! and swept, every unspent deposit refunded, and the on-chain balances reconcile with the
//! server's ledger and the clients' verified responses to the last atomic unit.

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
    // One gasless deposit per channel opened it (the deposit covers every request).
    assert_eq!(summary.crawl.deposits.len(), 4);
    assert_eq!(summary.crawl.paid.len(), 96);
    assert_eq!(summary.crawl.free.len(), 24); // every 4th page, 6 per payer
    // 4 channels in batches of 3 → 2 claim transactions.
    assert_eq!(summary.claim_txs, 2);
    // 2 refunds asked over HTTP, 2 made by the server for idle channels.
    assert_eq!((summary.refund_txs, summary.refunds_over_http), (4, 2));
    assert_eq!(summary.after.escrow, summary.before.escrow);
    assert!(summary.crawl.charged <= summary.crawl.signed);
    assert_eq!(
        summary.after.receiver - summary.before.receiver,
        summary.crawl.charged
    );
    summary.reconcile().expect("balances reconcile");
}
