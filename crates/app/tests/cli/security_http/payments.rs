//! Payments through the proxy: malformed upstream charges, hang-ups, duplicate headers, the
//! reflected `Host`, and the receipt of a deposit whose upstream failed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use x402_upto::wire::encode_header;

use super::rig::{PAID, Proxy, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_upstream_charge_is_a_502_and_charges_nothing() {
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let config = f.config(2);
    let id = f.fund(&config, 100_000);
    // Open the channel so that the refusals below compare a known state.
    let header = encode_header(&f.voucher_payload(&config, PAID));
    assert_eq!(
        proxy
            .get("/paid/ok?charge=10", &[("PAYMENT-SIGNATURE", &header)])
            .await
            .status,
        200
    );
    proxy.seen.take();
    let max = 10 + PAID;
    for raw in [
        "abc",
        "-5",
        "1.5",
        "1e3",
        "",
        "%2B5",
        "0x10",
        "5%205",
        "340282366920938463463374607431768211456",
        "99999999999999999999999999999999999999999999",
    ] {
        let before = f.state().await;
        let header = encode_header(&f.voucher_payload(&config, max));
        let answer = proxy
            .get(
                &format!("/paid/ok?charge={raw}"),
                &[("PAYMENT-SIGNATURE", &header)],
            )
            .await;
        assert_eq!(answer.status, 502, "charge {raw:?}: {answer:?}");
        assert!(answer.header("payment-response").is_none(), "{raw:?}");
        assert!(answer.header("x-upto-charge").is_none(), "{raw:?}");
        assert_eq!(proxy.seen.take().len(), 1, "{raw:?}");
        assert_eq!(f.state().await, before, "charge {raw:?} changed state");
    }
    // The same voucher, with a well-formed charge, is then served and charged exactly.
    let header = encode_header(&f.voucher_payload(&config, max));
    let answer = proxy
        .get("/paid/ok?charge=5", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.response()["extra"]["chargedAmount"], "5");
    assert_eq!(f.engine.ledger().snapshot(&id).unwrap().charged, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_work_is_charged_when_the_client_hangs_up() {
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let config = f.config(3);
    let id = f.fund(&config, 100_000);
    let header = encode_header(&f.voucher_payload(&config, PAID));
    let request = format!(
        "GET /paid/slow?sleep=400&charge=700 HTTP/1.1\r\nHost: localhost\r\nPAYMENT-SIGNATURE: {header}\r\n\r\n"
    );
    // The same voucher five times, hanging up 100 ms in, each time.
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(&proxy.addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    // The first request's upstream answered after its client left: charged, durably.
    let mut charged = 0;
    for _ in 0..50 {
        charged = f.engine.ledger().snapshot(&id).map_or(0, |s| s.charged);
        if charged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(charged, 700);
    let stored = x402_upto::Store::load(f.engine.store().as_ref(), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.charged, 700);
    // The upstream ran once: the replays found the channel held, then the voucher spent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.seen.take().len(), 1);
    let answer = send(
        &proxy.addr,
        request
            .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 402);
    assert_eq!(
        answer.reason(),
        "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    );
    assert!(proxy.seen.take().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_payment_headers_are_refused_as_invalid_payload() {
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let config = f.config(4);
    f.fund(&config, 100_000);
    let before = f.state().await;
    let one = encode_header(&f.voucher_payload(&config, PAID));
    let other = encode_header(&f.voucher_payload(&config, 2 * PAID));
    for pair in [[&one, &other], [&one, &one]] {
        let answer = proxy
            .get(
                "/paid/ok",
                &[
                    ("PAYMENT-SIGNATURE", pair[0]),
                    ("payment-signature", pair[1]),
                ],
            )
            .await;
        assert_eq!(answer.status, 402);
        assert_eq!(answer.reason(), "invalid_payload");
        assert!(proxy.seen.take().is_empty());
        assert_eq!(f.state().await, before);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_header_is_bounded_or_replaced_by_the_public_url() {
    let proxy = Proxy::start("").await;
    let huge = "h".repeat(15 * 1024);
    let bad = proxy.get("/paid/ok", &[]).await;
    assert_eq!(bad.status, 402, "a plain Host is fine");
    for host in [huge.as_str(), "evil.com/x?y", "a b", ""] {
        let req = format!("GET /paid/ok HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let answer = send(&proxy.addr, req.as_bytes()).await;
        assert_eq!(answer.status, 400, "Host {:?}", &host[..host.len().min(20)]);
        assert!(answer.body.len() < 512);
    }
    let proxy = Proxy::start("public_url = \"https://api.example.com/v1\"").await;
    let req = format!("GET /paid/ok HTTP/1.1\r\nHost: {huge}\r\nConnection: close\r\n\r\n");
    let answer = send(&proxy.addr, req.as_bytes()).await;
    assert_eq!(answer.status, 402);
    assert!(answer.header("payment-required").unwrap().len() < 2048);
    assert_eq!(
        answer.required()["resource"]["url"],
        "https://api.example.com/v1/paid/ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposit_whose_upstream_fails_comes_back_with_its_receipt() {
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let config = f.config(5);
    let id = f.id(&config);
    let header = encode_header(&f.deposit_payload(&config, PAID, 10_000));
    let answer = proxy
        .get("/paid/ok?status=500", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 500);
    let receipt = answer.response();
    assert_eq!(receipt["success"], true, "{receipt}");
    assert_eq!(receipt["amount"], "10000");
    assert!(receipt["transaction"].as_str().unwrap().starts_with("0x"));
    assert_eq!(receipt["extra"]["chargedAmount"], "0");
    assert_eq!(receipt["extra"]["channelState"]["balance"], "10000");
    assert_eq!(
        receipt["extra"]["channelState"]["chargedCumulativeAmount"],
        "0"
    );
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 1);
    assert_eq!(f.engine.ledger().snapshot(&id).unwrap().charged, 0);
    // Told of its balance, the client pays the next request with a plain voucher.
    let header = encode_header(&f.voucher_payload(&config, PAID));
    let answer = proxy
        .get("/paid/ok", &[("PAYMENT-SIGNATURE", &header)])
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 1);
    assert_eq!(f.engine.ledger().snapshot(&id).unwrap().charged, PAID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_takes_in_the_receipt_of_a_failed_request_and_does_not_deposit_twice() {
    use alloy_primitives::Address;
    use x402_upto::client::{ClientConfig, PayingClient};
    let proxy = Proxy::start("").await;
    let f = &proxy.fixture;
    let client = PayingClient::new(
        ClientConfig::new(f.payer.clone())
            .with_contracts(Address::repeat_byte(0xee), Address::repeat_byte(0xcc)),
    );
    let failed = client
        .get(&format!("http://{}/paid/ok?status=500", proxy.addr))
        .await
        .unwrap();
    assert_eq!(failed.status, 500);
    assert_eq!(f.chain.deposits.load(Ordering::SeqCst), 1);
    let state = &client.channels()[0];
    assert_eq!((state.charged, state.balance), (0, state.deposited));
    assert!(state.deposited > 0);
    for _ in 0..3 {
        let ok = client
            .get(&format!("http://{}/paid/ok", proxy.addr))
            .await
            .unwrap();
        assert_eq!(ok.status, 200);
    }
    assert_eq!(
        f.chain.deposits.load(Ordering::SeqCst),
        1,
        "no second deposit"
    );
    assert_eq!(client.channels()[0].charged, 3 * PAID);
}
