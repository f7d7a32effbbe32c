//! Relayed deposits wait for `[deposits] confirmations` before they are credited (on anvil):
//! the paying request is answered only once the deposit has its blocks; a deposit whose
//! block a reorg dropped is refused (`deposit_transaction_failed`) with nothing credited,
//! charged or stored, the payer's tokens and the relayer's nonce as before; a deposit still
//! short of its blocks at the timeout is refused (`wait_for_receipt_failed`), uncredited.

use std::sync::Arc;
use std::time::Duration;

use alloy::providers::Provider;
use x402_upto::Store;
use x402_upto::chain::escrow::DepositConfirmations;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};
use x402_upto::engine::ChainAccess;

use super::interop::{Chain, OurServer};

const BLOCKS: u64 = 2;
const PAYER: usize = 3;
/// The client deposits 10 × the price of 1000.
const DEPOSIT: u128 = 10_000;

async fn server(chain: &Chain, timeout: Duration) -> OurServer {
    let access: Arc<dyn ChainAccess> = Arc::new(chain.escrow_client().with_deposit_confirmations(
        DepositConfirmations {
            blocks: BLOCKS,
            timeout,
            poll: Duration::from_millis(25),
        },
    ));
    OurServer::start_with(chain, 1000, access).await
}

fn client(chain: &Chain, dir: &std::path::Path) -> Arc<PayingClient> {
    Arc::new(PayingClient::new(
        ClientConfig::new(chain.net.key(PAYER).unwrap())
            .with_contracts(chain.escrow, chain.collector)
            .with_state_dir(dir),
    ))
}

async fn head(chain: &Chain) -> u64 {
    chain.net.provider.get_block_number().await.unwrap()
}

/// Waits until a block above `from` exists (the relayer's deposit was mined).
async fn mined_above(chain: &Chain, from: u64) {
    for _ in 0..400 {
        if head(chain).await > from {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the deposit was never mined");
}

type Paying = tokio::task::JoinHandle<Result<x402_upto::client::Answer, ClientError>>;

fn pay(c: &Arc<PayingClient>, url: &str) -> Paying {
    let (c, url) = (Arc::clone(c), format!("{url}?charge=100"));
    tokio::spawn(async move { c.get(&url).await })
}

/// `err` is the server's 402 refusal with `want` as its reason.
fn assert_refused(err: &ClientError, want: &str) {
    match err {
        ClientError::Refused { status, reason, .. } => {
            assert_eq!(*status, 402);
            assert_eq!(reason, want);
        }
        other => panic!("{other:?}"),
    }
}

/// Nothing of the channel reached the server: no ledger record, nothing stored.
async fn nothing_credited(s: &OurServer) {
    assert!(s.engine.ledger().records().is_empty(), "ledger credited");
    assert!(
        s.engine.store().load_all().await.unwrap().is_empty(),
        "stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_is_credited_only_once_it_has_its_confirmations() {
    let chain = Chain::plain(&[PAYER]).await;
    let s = server(&chain, Duration::from_secs(30)).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, dir.path());
    let h0 = head(&chain).await;
    let paying = pay(&c, &s.url);
    mined_above(&chain, h0).await;
    for blocks in 0..BLOCKS {
        // Mined with `blocks` confirmations: the request still waits, nothing is credited.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !paying.is_finished(),
            "answered with {blocks} confirmations"
        );
        nothing_credited(&s).await;
        chain.net.mine().await.unwrap();
    }
    let a = tokio::time::timeout(Duration::from_secs(10), paying)
        .await
        .expect("answered once confirmed")
        .unwrap()
        .unwrap();
    assert_eq!((a.status.as_u16(), a.charged()), (200, Some(100)));
    let id = c.channels()[0].channel_id;
    let snap = s.engine.ledger().snapshot(&id).unwrap();
    assert_eq!((snap.balance, snap.charged), (DEPOSIT, 100));
    assert_eq!(c.channels()[0].deposited, DEPOSIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_dropped_by_a_reorg_is_refused_and_nothing_is_credited() {
    let chain = Chain::plain(&[PAYER]).await;
    let s = server(&chain, Duration::from_secs(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, dir.path());
    let payer = chain.net.key(PAYER).unwrap().address();
    let (tokens, nonce, h0) = (
        chain.net.balance_of(payer).await.unwrap(),
        chain.relayer_nonce().await,
        head(&chain).await,
    );
    let paying = pay(&c, &s.url);
    mined_above(&chain, h0).await;
    assert_eq!(
        chain.relayer_nonce().await,
        nonce + 1,
        "the deposit is mined"
    );
    // The deposit's block is replaced by an empty one; the chain then grows past the
    // confirmation depth without it.
    chain.net.reorg_one_block().await.expect("anvil_reorg");
    for _ in 0..=BLOCKS {
        chain.net.mine().await.unwrap();
    }
    let err = tokio::time::timeout(Duration::from_secs(10), paying)
        .await
        .expect("refused within the timeout")
        .unwrap()
        .unwrap_err();
    assert_refused(
        &err,
        "invalid_batch_settlement_evm_deposit_transaction_failed",
    );
    nothing_credited(&s).await;
    let id = c.channels()[0].channel_id;
    let onchain = chain.escrow_client().channel_state(id).await.unwrap();
    assert_eq!((onchain.balance, onchain.total_claimed), (0, 0));
    assert_eq!(chain.net.balance_of(payer).await.unwrap(), tokens);
    assert_eq!(
        chain.relayer_nonce().await,
        nonce,
        "the relayer's transaction is gone"
    );
    let local = &c.channels()[0];
    assert_eq!((local.charged, local.balance, local.deposited), (0, 0, 0));

    // The relayer recovers its nonce: the client's next deposit is relayed and credited.
    let miner = tokio::spawn({
        let rpc = chain.rpc.clone();
        async move {
            let p = alloy::providers::ProviderBuilder::new().connect_http(rpc.parse().unwrap());
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = p
                    .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
                    .await;
            }
        }
    });
    let a = tokio::time::timeout(
        Duration::from_secs(20),
        c.get(&format!("{}?charge=100", s.url)),
    )
    .await
    .expect("paid")
    .unwrap();
    miner.abort();
    assert_eq!((a.status.as_u16(), a.charged()), (200, Some(100)));
    assert_eq!(chain.relayer_nonce().await, nonce + 1);
    assert_eq!(chain.net.balance_of(payer).await.unwrap(), tokens - DEPOSIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_short_of_its_confirmations_at_the_timeout_is_refused_uncredited() {
    let chain = Chain::plain(&[PAYER]).await;
    let s = server(&chain, Duration::from_secs(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(&chain, dir.path());
    let nonce = chain.relayer_nonce().await;
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        c.get(&format!("{}?charge=100", s.url)),
    )
    .await
    .expect("refused at the timeout")
    .unwrap_err();
    assert_refused(&err, "invalid_batch_settlement_evm_wait_for_receipt_failed");
    nothing_credited(&s).await;
    // The deposit itself is on chain, in the payer's own channel (refundable, withdrawable):
    // only the server's credit waited for depth.
    assert_eq!(chain.relayer_nonce().await, nonce + 1);
    let id = c.channels()[0].channel_id;
    assert_eq!(
        chain
            .escrow_client()
            .channel_state(id)
            .await
            .unwrap()
            .balance,
        DEPOSIT
    );
    assert_eq!(c.channels()[0].charged, 0);
}
