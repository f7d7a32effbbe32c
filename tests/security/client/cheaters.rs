//! The list of cheating servers survives the client: a new `PayingClient` over the same
//! state dir refuses to pay a server an earlier one caught, without sending it anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};
use x402_upto::wire::encode_header;

/// A server whose `PAYMENT-RESPONSE` charges 50× its offer. Counts the paid requests.
async fn overcharging_server(pay_to: Address) -> (String, Arc<AtomicUsize>) {
    let offer = json!({"scheme": "batch-settlement", "network": "eip155:31337", "amount": "100",
        "asset": Address::repeat_byte(0x5f), "payTo": pay_to, "maxTimeoutSeconds": 300,
        "extra": {"name": "USDC", "version": "2", "receiverAuthorizer": Address::repeat_byte(0x3c),
                  "withdrawDelay": 900}});
    let required = encode_header(
        &json!({"x402Version": 2, "resource": {"url": "http://x/paid"}, "accepts": [offer]}),
    );
    let paid = Arc::new(AtomicUsize::new(0));
    let counter = paid.clone();
    let app = Router::new().route(
        "/paid",
        get(move |headers: axum::http::HeaderMap| {
            let required = required.clone();
            let counter = counter.clone();
            async move {
                if headers.get("payment-signature").is_none() {
                    return (axum::http::StatusCode::PAYMENT_REQUIRED, [("PAYMENT-REQUIRED", required)], "").into_response();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let forged = encode_header(&json!({"success": true, "transaction": "", "network": "eip155:31337",
                    "amount": "100000", "extra": {"chargedAmount": "5000", "channelState": {
                    "channelId": format!("0x{}", "00".repeat(32)), "balance": "100000", "totalClaimed": "0",
                    "withdrawRequestedAt": 0, "refundNonce": "0", "chargedCumulativeAmount": "5000"}}}));
                (axum::http::StatusCode::OK, [("PAYMENT-RESPONSE", forged)], "ok").into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/paid", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, paid)
}

fn client(payer: &PrivateKeySigner, dir: &std::path::Path) -> PayingClient {
    PayingClient::new(ClientConfig::new(payer.clone()).with_state_dir(dir))
}

#[tokio::test]
async fn a_new_client_over_the_same_state_dir_still_refuses_a_cheating_server() {
    let pay_to = Address::repeat_byte(0x77);
    let (url, paid) = overcharging_server(pay_to).await;
    let payer = PrivateKeySigner::random();
    let dir = tempfile::tempdir().unwrap();

    let first = client(&payer, dir.path());
    let err = first.get(&url).await.unwrap_err();
    let ClientError::ServerCheated { what: caught, .. } = err else {
        panic!("{err:?}");
    };
    assert_eq!(
        paid.load(Ordering::SeqCst),
        1,
        "one paid request, then caught"
    );
    assert_eq!(first.cheaters().len(), 1);
    let channels = first.channels();
    assert_eq!(channels.len(), 1, "the list file is not read as a channel");
    drop(first);

    // A restarted client (same state dir): refused before anything is signed or sent.
    let second = client(&payer, dir.path());
    assert_eq!(second.cheaters(), vec![(pay_to, caught)]);
    let err = second.get(&url).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::ServerCheated { what, .. } if what.contains("earlier")),
        "{err:?}"
    );
    assert_eq!(
        paid.load(Ordering::SeqCst),
        1,
        "the restarted client paid nothing"
    );
    assert_eq!(second.channels(), channels, "no channel state changed");
    let err = second.refund(&url, None).await.unwrap_err();
    assert!(matches!(err, ClientError::ServerCheated { .. }), "{err:?}");

    // The list is per state dir: a client elsewhere has its own (and memory-only ones none).
    let other = tempfile::tempdir().unwrap();
    assert!(client(&payer, other.path()).cheaters().is_empty());
    assert!(
        PayingClient::new(ClientConfig::new(payer))
            .cheaters()
            .is_empty()
    );
}

#[tokio::test]
async fn a_corrupt_cheater_list_is_not_mistaken_for_a_channel_and_does_not_stop_the_client() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cheaters.json"), b"{not json").unwrap();
    let c = client(&PrivateKeySigner::random(), dir.path());
    assert!(c.cheaters().is_empty());
    assert!(c.channels().is_empty());
    // Catching a server rewrites the file whole and readable.
    let (url, _) = overcharging_server(Address::repeat_byte(0x78)).await;
    assert!(c.get(&url).await.is_err());
    let again = client(&PrivateKeySigner::random(), dir.path());
    assert_eq!(again.cheaters().len(), 1);
}
