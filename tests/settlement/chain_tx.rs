//! TxSender on a real anvil: plain sends, replacement of a stuck transaction,
//! concurrent nonces, and resynchronisation after another process used the key.

use std::sync::Arc;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use x402_upto::chain::tx::{TxPolicy, TxSender};

fn anvil_path() -> std::path::PathBuf {
    let path = std::env::var_os("X402_UPTO_ANVIL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/anvil")
        });
    assert!(
        path.exists(),
        "anvil not found at {}: run `bash scripts/tools.sh` (or set X402_UPTO_ANVIL)",
        path.display()
    );
    path
}

fn spawn() -> (AnvilInstance, TxSender, alloy::providers::DynProvider) {
    let anvil = Anvil::new().path(anvil_path()).spawn();
    let provider = ProviderBuilder::new()
        .connect_http(anvil.endpoint_url())
        .erased();
    let signer: PrivateKeySigner = anvil.keys()[0].clone().into();
    let policy = TxPolicy {
        attempt_timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(20),
        poll_interval: Duration::from_millis(20),
        ..TxPolicy::default()
    };
    let sender = TxSender::new(provider.clone(), signer, anvil.chain_id(), policy);
    (anvil, sender, provider)
}

/// How many transactions `who` has sent (its next nonce) on the node.
async fn sent_count(provider: &alloy::providers::DynProvider, who: Address) -> u64 {
    provider
        .get_transaction_count(who)
        .await
        .expect("transaction count")
}

fn transfer(to: Address, wei: u64) -> TransactionRequest {
    TransactionRequest::default()
        .with_to(to)
        .with_value(U256::from(wei))
}

#[tokio::test]
async fn sends_and_returns_a_successful_receipt() {
    let (anvil, sender, provider) = spawn();
    let to = anvil.addresses()[1];
    let before = provider.get_balance(to).await.unwrap();
    let sent = sender.send(transfer(to, 7), "transfer").await.unwrap();
    assert_eq!(sent.broadcasts, 1);
    assert!(sent.receipt.status());
    assert_eq!(
        provider.get_balance(to).await.unwrap(),
        before + U256::from(7)
    );
}

#[tokio::test]
async fn replaces_a_stuck_transaction_with_higher_fees() {
    let (anvil, sender, provider) = spawn();
    let to = anvil.addresses()[1];
    provider
        .raw_request::<_, ()>("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let sender = Arc::new(sender);
    let task = tokio::spawn({
        let sender = sender.clone();
        async move { sender.send(transfer(to, 1), "stuck").await }
    });
    // Let at least two replacement rounds happen, then mine one block.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    provider
        .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
        .await
        .unwrap();
    let sent = task.await.unwrap().unwrap();
    assert!(
        sent.broadcasts >= 2,
        "expected a replacement, got {} broadcasts",
        sent.broadcasts
    );
    // The pool kept only the highest-fee version: that is the one mined.
    let block = provider.get_block_number().await.unwrap();
    assert_eq!(sent.receipt.block_number, Some(block));
    assert_eq!(sent_count(&provider, sender.address()).await, 1);
}

#[tokio::test]
async fn concurrent_sends_get_distinct_nonces() {
    let (anvil, sender, provider) = spawn();
    let sender = Arc::new(sender);
    let to = anvil.addresses()[2];
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            sender.send(transfer(to, i + 1), "parallel").await
        }));
    }
    let mut nonces = Vec::new();
    for t in tasks {
        nonces.push(t.await.unwrap().unwrap().nonce);
    }
    nonces.sort_unstable();
    assert_eq!(nonces, (0..20).collect::<Vec<_>>());
    assert_eq!(sent_count(&provider, sender.address()).await, 20);
}

#[tokio::test]
async fn resynchronises_after_another_process_used_the_key() {
    let (anvil, sender, provider) = spawn();
    let to = anvil.addresses()[3];
    sender.send(transfer(to, 1), "first").await.unwrap();
    // Another sender with the same key moves the nonce behind our back.
    let other = TxSender::new(
        provider.clone(),
        anvil.keys()[0].clone().into(),
        anvil.chain_id(),
        TxPolicy::default(),
    );
    other.send(transfer(to, 1), "other").await.unwrap();
    // Our cached nonce (1) is now stale; the sender notices and uses 2.
    let sent = sender.send(transfer(to, 1), "stale").await.unwrap();
    assert_eq!(sent.nonce, 2);
}
