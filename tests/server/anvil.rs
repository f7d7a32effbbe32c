//! The payment layer against the real escrow on anvil: a gasless ERC-3009 deposit submitted
//! by the server, vouchers, a top-up, a reverted deposit, and a cooperative refund that claims
//! the charged amount in the same transaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::anvil_fixture::AnvilFixture;

use alloy_primitives::U256;
use axum::http::StatusCode;

#[tokio::test]
async fn a_gasless_deposit_vouchers_and_a_refund_settle_on_chain() {
    let rig = AnvilFixture::start(1_000_000).await;
    let (net, f) = (&rig.net, &rig.f);
    let config = f.config(1);
    let id = f.id(&config);
    let payer = config.payer;
    let start = net.balance_of(payer).await.unwrap();

    let p = f.deposit_payload_with(&config, 1000, 10_000, rig.erc3009(&config, 10_000, 1));
    let a = f.send_ok("/paid?charge=300", &p).await;
    let r = a.settle();
    assert_eq!(r.amount.as_deref(), Some("10000"));
    assert_eq!(r.transaction.len(), 66);
    assert_eq!(net.balance_of(payer).await.unwrap(), start - 10_000);
    let mut charged = 300u128;
    for charge in [1000u128, 10, 0, 999] {
        let a = f
            .send_ok(
                &format!("/paid?charge={charge}"),
                &f.voucher_payload(&config, charged + 1000),
            )
            .await;
        charged += charge;
        let extra = a.settle().extra.unwrap();
        assert_eq!(
            extra.channel_state.unwrap().charged_cumulative_amount,
            Some(charged)
        );
    }
    // Top-up: the voucher is checked against balance + deposit.
    let p = f.deposit_payload_with(
        &config,
        charged + 1000,
        5_000,
        rig.erc3009(&config, 5_000, 2),
    );
    let a = f.send_ok("/paid?charge=1", &p).await;
    charged += 1;
    assert_eq!(
        a.settle().extra.unwrap().channel_state.unwrap().balance,
        15_000
    );

    // Reusing a consumed ERC-3009 authorization reverts in simulation: clear 402, no state.
    let before = f.state().await;
    let p = f.deposit_payload_with(
        &config,
        charged + 1000,
        5_000,
        rig.erc3009(&config, 5_000, 2),
    );
    let a = f.send("/paid", &p).await;
    assert_eq!(a.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        a.reason(),
        "invalid_batch_settlement_evm_deposit_simulation_failed",
        "{:?}",
        a.body
    );
    assert_eq!(f.state().await, before);

    // Cooperative refund: claims `charged` and returns the rest in one transaction.
    let a = f
        .send_ok("/paid", &f.refund_payload(&config, charged, None))
        .await;
    let r = a.settle();
    assert_eq!(r.amount, Some((15_000 - charged).to_string()));
    let cs = r.extra.unwrap().channel_state.unwrap();
    assert_eq!((cs.balance, cs.total_claimed), (charged, charged));
    assert_eq!(cs.refund_nonce, U256::from(1));
    assert_eq!(net.balance_of(payer).await.unwrap(), start - charged);
    assert!(f.engine.ledger().snapshot(&id).is_none());
}
