//! The list of cheating servers survives the client: a new `PayingClient` over the same
//! state dir refuses to pay a server an earlier one caught, without sending it anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use x402_upto::client::{ClientConfig, ClientError, PayingClient};

/// A server whose `PAYMENT-RESPONSE` charges 50× its offer. Counts the paid requests.
async fn overcharging_server(pay_to: Address) -> (String, Arc<AtomicUsize>) {
    super::interop::overcharging_server(
        Address::repeat_byte(0x5f),
        pay_to,
        Address::repeat_byte(0x3c),
    )
    .await
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
