//! The demo end to end on anvil, small: paying clients over HTTP, every paid request claimed
//! and swept, every unspent deposit refunded, and the on-chain balances reconcile with the
//! server's ledger and the clients' verified responses to the last atomic unit.

use x402_upto_app::demo::{DemoArgs, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_demo_reconciles_on_chain() {
    let args = DemoArgs {
        channels: 4,
        requests: 25,
        price: 1_000,
        deposit: 100_000,
        gpu_jobs: 2,
        gpu_seconds: 150,
        batch: 3,
        quiet: true,
    };
    let summary = run(&args).await.expect("demo runs");
    assert_eq!(summary.crawl.requests, 100);
    // One gasless deposit per channel opened it (the deposit covers every request).
    assert_eq!(summary.crawl.deposits.len(), 4);
    assert_eq!(summary.crawl.paid.len(), 96);
    assert_eq!(summary.crawl.free.len(), 24); // every 4th page, 6 per payer
    // Two GPU jobs of 150 s, paid a minute at a time: the first renews twice (to 3 minutes);
    // the second's client caps it at 2 minutes: one renewal, then it stops cleanly at 120 s.
    let gpu = &summary.gpu;
    assert_eq!(
        (gpu.jobs, gpu.seconds, gpu.renewals, gpu.capped),
        (2, 270, 3, 1)
    );
    assert_eq!(gpu.charged, 270 * 100);
    assert_eq!(gpu.charged_by_payer, vec![15_000, 12_000]);
    assert_eq!(gpu.deposits.len(), 2);
    // 6 channels in batches of 3 → 2 claim transactions.
    assert_eq!(summary.claim_txs, 2);
    // 3 refunds asked over HTTP, 2 made by the server for idle channels: the capped GPU
    // job deposited exactly its 2-minute budget and used all of it, so nothing is left.
    assert_eq!((summary.refund_txs, summary.refunds_over_http), (5, 3));
    assert_eq!(summary.after.escrow, summary.before.escrow);
    assert!(summary.crawl.charged <= summary.crawl.signed);
    assert_eq!(
        summary.after.receiver - summary.before.receiver,
        summary.crawl.charged + summary.gpu.charged
    );
    summary.reconcile().expect("balances reconcile");
}
