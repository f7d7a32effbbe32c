//! Deposits: one flight per channel and per ERC-3009 authorization, before any estimate or
//! send; a replayed authorization costs no transaction.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::future::join_all;
use serde_json::json;
use x402_upto::Reason;

use super::anvil;
use super::support::Fixture;

const BUSY: &str = "invalid_batch_settlement_evm_channel_busy";
const SIMULATION: &str = "invalid_batch_settlement_evm_deposit_simulation_failed";

/// An authorization as the mock chain takes it, with a fixed salt (one authorization).
fn auth(salt: u8) -> serde_json::Value {
    json!({"validAfter": "0", "validBefore": "99999999999",
           "salt": alloy_primitives::B256::repeat_byte(salt),
           "signature": format!("0x{}", "11".repeat(65))})
}

/// Sends `copies` copies of `payload` at once while the mock chain holds the first deposit in
/// flight; returns the answers' statuses and reasons.
async fn in_parallel(
    f: &Fixture,
    payload: &serde_json::Value,
    copies: usize,
) -> Vec<(StatusCode, String)> {
    let gate = Arc::new(tokio::sync::Notify::new());
    *f.chain.deposit_gate.lock() = Some(Arc::clone(&gate));
    let sends = join_all((0..copies).map(|_| f.send("/paid?charge=100", payload)));
    let release = async {
        // The duplicates are refused without waiting on anything; then let the first land.
        tokio::time::sleep(Duration::from_millis(200)).await;
        // One release per copy, so a missing guard shows as extra chain calls, not a hang.
        for _ in 0..copies {
            gate.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (answers, ()) = tokio::join!(sends, release);
    *f.chain.deposit_gate.lock() = None;
    answers
        .iter()
        .map(|a| {
            let reason = if a.status == StatusCode::OK {
                String::new()
            } else {
                a.reason()
            };
            (a.status, reason)
        })
        .collect()
}

fn tally(answers: &[(StatusCode, String)]) -> (usize, usize) {
    let ok = answers.iter().filter(|(s, _)| *s == StatusCode::OK).count();
    let busy = answers
        .iter()
        .filter(|(s, r)| *s == StatusCode::PAYMENT_REQUIRED && r == BUSY)
        .count();
    (ok, busy)
}

#[tokio::test]
async fn six_parallel_copies_of_a_first_deposit_make_one_chain_call() {
    let f = Fixture::new().await;
    let config = f.config(1);
    let id = f.id(&config);
    let p = f.deposit_payload_with(&config, 1000, 10_000, auth(1));
    let answers = in_parallel(&f, &p, 6).await;
    assert_eq!(tally(&answers), (1, 5), "{answers:?}");
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), 1);
    let s = f.engine.ledger().snapshot(&id).expect("opened");
    assert_eq!((s.balance, s.charged), (10_000, 100));
    assert_eq!(f.handler_runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn four_parallel_copies_of_a_top_up_make_one_chain_call() {
    let f = Fixture::new().await;
    let config = f.config(2);
    let id = f.id(&config);
    let first = f.deposit_payload_with(&config, 1000, 10_000, auth(1));
    assert_eq!(
        f.send("/paid?charge=100", &first).await.status,
        StatusCode::OK
    );
    let top_up = f.deposit_payload_with(&config, 1100, 5_000, auth(2));
    let answers = in_parallel(&f, &top_up, 4).await;
    assert_eq!(tally(&answers), (1, 3), "{answers:?}");
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), 2);
    let s = f.engine.ledger().snapshot(&id).expect("known");
    assert_eq!((s.balance, s.charged), (15_000, 200));
}

/// A second authorization on the same channel while a deposit is in flight is busy too
/// (single flight per channel), and one authorization cannot be in flight twice.
#[tokio::test]
async fn a_different_authorization_on_a_channel_with_a_deposit_in_flight_is_busy() {
    let f = Fixture::new().await;
    let config = f.config(3);
    let a = f.deposit_payload_with(&config, 1000, 10_000, auth(1));
    let b = f.deposit_payload_with(&config, 1000, 10_000, auth(2));
    let gate = Arc::new(tokio::sync::Notify::new());
    *f.chain.deposit_gate.lock() = Some(Arc::clone(&gate));
    let first = f.send("/paid", &a);
    let second = async {
        while f.chain.deposit_calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let before = f.state().await;
        let answer = f.send("/paid", &b).await;
        assert_eq!(f.state().await, before);
        gate.notify_one();
        answer
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(second.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(second.reason(), BUSY);
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), 1);
}

/// Replays of a submitted authorization, whatever became of the first request, are refused
/// from memory: no chain call, no state change.
#[tokio::test]
async fn a_replayed_authorization_is_refused_without_a_chain_call() {
    let f = Fixture::new().await;
    // Served, then replayed.
    let config = f.config(4);
    let p = f.deposit_payload_with(&config, 1000, 10_000, auth(1));
    assert_eq!(f.send("/paid?charge=100", &p).await.status, StatusCode::OK);
    // The deposit landed but the handler failed: nothing charged, the voucher still fits.
    let failed = f.config(5);
    let q = f.deposit_payload_with(&failed, 1000, 10_000, auth(1));
    assert_eq!(
        f.send("/paid?status=500", &q).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    // Reverted on chain (the relayer paid once): not again.
    let reverted = f.config(6);
    let r = f.deposit_payload_with(&reverted, 1000, 10_000, auth(1));
    *f.chain.fail_deposit.lock() = Some(Reason::DepositTransactionFailed);
    assert_eq!(
        f.send("/paid", &r).await.status,
        StatusCode::PAYMENT_REQUIRED
    );
    *f.chain.fail_deposit.lock() = None;

    let calls = f.chain.deposit_calls.load(Ordering::SeqCst);
    assert_eq!(calls, 3);
    let before = f.state().await;
    for (what, payload) in [("served", &p), ("handler failed", &q), ("reverted", &r)] {
        for path in ["/paid", "/paid?charge=100"] {
            let a = f.send(path, payload).await;
            assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED, "{what}");
            assert_eq!(a.reason(), SIMULATION, "{what}");
            let msg = a.body["message"].as_str().unwrap_or_default();
            assert!(msg.contains("already submitted"), "{what}: {msg}");
        }
    }
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), calls);
    assert_eq!(f.state().await, before);
}

/// An authorization refused by the simulation was never broadcast: the same header may be
/// sent again (a node outage must not burn the payer's signature).
#[tokio::test]
async fn an_authorization_refused_by_simulation_may_be_retried() {
    let f = Fixture::new().await;
    let config = f.config(7);
    let p = f.deposit_payload_with(&config, 1000, 10_000, auth(1));
    *f.chain.fail_deposit.lock() = Some(Reason::DepositSimulationFailed);
    let a = f.send("/paid", &p).await;
    assert_eq!(a.reason(), SIMULATION);
    *f.chain.fail_deposit.lock() = None;
    f.send_ok("/paid", &p).await;
    assert_eq!(f.chain.deposit_calls.load(Ordering::SeqCst), 2);
}

/// On anvil: six parallel copies of one first-deposit header cost exactly one transaction
/// (the issue measured six, five reverting at 45,838 gas each), four copies of a top-up one,
/// and a replay after it was mined none.
#[tokio::test]
async fn on_chain_duplicates_and_replays_of_a_deposit_cost_one_transaction() {
    let a = anvil().await;
    let f = &a.f;
    let config = f.config(1);
    let id = f.id(&config);
    let first = f.deposit_payload_with(&config, 1000, 100_000, a.erc3009(&config, 100_000, 1));
    let nonce = a.relayer_nonce().await;
    let answers = join_all((0..6).map(|_| f.send("/paid?charge=100", &first))).await;
    let ok = answers
        .iter()
        .filter(|x| x.status == StatusCode::OK)
        .count();
    let busy: Vec<String> = answers
        .iter()
        .filter(|x| x.status != StatusCode::OK)
        .map(|x| x.reason())
        .collect();
    assert_eq!(ok, 1, "{busy:?}");
    assert!(busy.iter().all(|r| r == BUSY), "{busy:?}");
    assert_eq!(a.relayer_nonce().await, nonce + 1, "one transaction");
    assert_eq!(a.client.channel_state(id).await.unwrap().balance, 100_000);

    // Replayed after it was mined: refused from memory, no transaction, no state change.
    let before = f.state().await;
    let again = f.send("/paid", &first).await;
    assert_eq!(again.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(again.reason(), SIMULATION);
    assert_eq!(f.state().await, before);
    assert_eq!(a.relayer_nonce().await, nonce + 1);

    let top_up = f.deposit_payload_with(&config, 1100, 50_000, a.erc3009(&config, 50_000, 2));
    let answers = join_all((0..4).map(|_| f.send("/paid?charge=100", &top_up))).await;
    let ok = answers
        .iter()
        .filter(|x| x.status == StatusCode::OK)
        .count();
    assert_eq!(ok, 1);
    assert!(
        answers
            .iter()
            .filter(|x| x.status != StatusCode::OK)
            .all(|x| x.reason() == BUSY)
    );
    assert_eq!(
        a.relayer_nonce().await,
        nonce + 2,
        "one transaction for the top-up"
    );
    let s = f.engine.ledger().snapshot(&id).unwrap();
    assert_eq!((s.balance, s.charged), (150_000, 200));
    assert_eq!(a.client.channel_state(id).await.unwrap().balance, 150_000);
}
