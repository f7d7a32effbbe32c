//! Unit tests of [`super::check`]: each rule caught, and the honest answer it lets through.

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{B256, Bytes, U256, address};
use serde_json::json;

use super::*;
use crate::typed_data::sign_voucher;
use crate::wire::{
    ChannelConfigWire, PaymentRequirements, PaymentResponseExtra, ResourceInfo, VoucherStateWire,
};

const NETWORK: &str = "eip155:8453";
const PRICE: u128 = 100;

struct Fixture {
    key: PrivateKeySigner,
    domain: EscrowDomain,
    channel: ChannelId,
}

impl Fixture {
    fn new() -> Self {
        Self {
            key: PrivateKeySigner::random(),
            domain: EscrowDomain::new(8453, address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003")),
            channel: ChannelId(B256::repeat_byte(7)),
        }
    }

    fn terms(&self) -> Terms<'_> {
        Terms {
            network: NETWORK,
            channel: self.channel,
            price: PRICE,
            domain: &self.domain,
            voucher_signer: self.key.address(),
        }
    }

    /// A channel we have been charged `charged` on, with `balance` in it.
    fn state(&self, charged: u128, balance: u128) -> ChannelState {
        ChannelState {
            channel_id: self.channel,
            network: NETWORK.into(),
            config: ChannelConfigWire {
                payer: Address::ZERO,
                payer_authorizer: self.key.address(),
                receiver: Address::repeat_byte(1),
                receiver_authorizer: Address::repeat_byte(2),
                token: Address::repeat_byte(3),
                withdraw_delay: 900,
                salt: B256::ZERO,
            },
            charged,
            balance,
            deposited: balance,
            signed_max: charged + PRICE,
            requests: 1,
        }
    }

    fn channel_state(&self, cumulative: u128, balance: u128) -> ChannelStateWire {
        ChannelStateWire {
            channel_id: self.channel.0,
            balance,
            total_claimed: 0,
            withdraw_requested_at: 0,
            refund_nonce: U256::ZERO,
            charged_cumulative_amount: Some(cumulative),
        }
    }

    /// An honest receipt: `charged` on top of `previous`.
    fn receipt(&self, previous: u128, charged: u128) -> SettleResponse {
        SettleResponse {
            success: true,
            error_reason: None,
            error_message: None,
            payer: None,
            transaction: String::new(),
            network: NETWORK.into(),
            amount: None,
            extra: Some(PaymentResponseExtra {
                charged_amount: Some(charged),
                channel_state: Some(self.channel_state(previous + charged, 1_000)),
                ..PaymentResponseExtra::default()
            }),
            extensions: None,
        }
    }

    /// A corrective 402 claiming `cumulative`, with `voucher` as its proof.
    fn corrective(
        &self,
        cumulative: u128,
        total_claimed: u128,
        voucher: Option<VoucherStateWire>,
    ) -> PaymentRequired {
        let mut cs = self.channel_state(cumulative, 1_000);
        cs.total_claimed = total_claimed;
        let extra = json!({
            "receiverAuthorizer": Address::repeat_byte(2),
            "withdrawDelay": 900, "name": "USDC", "version": "2",
            "channelState": cs, "voucherState": voucher,
        });
        PaymentRequired {
            x402_version: 2,
            error: Some("cumulative_amount_mismatch".into()),
            resource: ResourceInfo::default(),
            accepts: vec![PaymentRequirements {
                scheme: BATCH_SETTLEMENT.into(),
                network: NETWORK.into(),
                amount: PRICE.to_string(),
                asset: Address::repeat_byte(3).to_string(),
                pay_to: Address::repeat_byte(1).to_string(),
                max_timeout_seconds: 60,
                extra: extra.as_object().cloned().unwrap_or_default(),
            }],
            extensions: None,
        }
    }

    /// `key`'s signature over a voucher of `max` on our channel.
    fn voucher(&self, key: &PrivateKeySigner, max: u128) -> VoucherStateWire {
        let sig = sign_voucher(key, &self.domain, self.channel, max).expect("sign");
        VoucherStateWire {
            signed_max_claimable: Some(max),
            signature: Some(Bytes::from(sig.as_bytes().to_vec())),
        }
    }
}

fn paid(f: &Fixture, state: &ChannelState, settle: &SettleResponse) -> Result<ChannelState, Cheat> {
    check(
        state,
        &f.terms(),
        Response::Paid {
            settle,
            deposit: None,
        },
    )
}

fn cheat(result: Result<ChannelState, Cheat>) -> &'static str {
    result.expect_err("a cheating server passed").0
}

fn set_cumulative(settle: &mut SettleResponse, cumulative: u128) {
    if let Some(cs) = settle.extra.as_mut().and_then(|e| e.channel_state.as_mut()) {
        cs.charged_cumulative_amount = Some(cumulative);
    }
}

#[test]
fn an_honest_receipt_advances_the_state() {
    let f = Fixture::new();
    let state = f.state(300, 500);
    let mut settle = f.receipt(300, 40);
    settle.amount = Some("2000".into());
    let next = check(
        &state,
        &f.terms(),
        Response::Paid {
            settle: &settle,
            deposit: Some(2000),
        },
    )
    .expect("honest");
    assert_eq!(
        (next.charged, next.balance, next.deposited, next.requests),
        (340, 1_000, 2_500, 2)
    );
}

#[test]
fn a_receipt_without_charge_or_state_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 10);
    settle.extra = None;
    assert_eq!(
        cheat(paid(&f, &f.state(0, 0), &settle)),
        "PAYMENT-RESPONSE without chargedAmount/channelState"
    );
}

#[test]
fn success_false_on_a_paid_response_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 10);
    settle.success = false;
    assert_eq!(
        cheat(paid(&f, &f.state(0, 0), &settle)),
        "success is false on a paid response"
    );
}

#[test]
fn another_network_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 10);
    settle.network = "eip155:1".into();
    assert_eq!(cheat(paid(&f, &f.state(0, 0), &settle)), "network differs");
}

#[test]
fn another_channel_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 10);
    if let Some(cs) = settle.extra.as_mut().and_then(|e| e.channel_state.as_mut()) {
        cs.channel_id = B256::repeat_byte(8);
    }
    assert_eq!(
        cheat(paid(&f, &f.state(0, 0), &settle)),
        "channelState is for another channel"
    );
}

#[test]
fn an_overcharge_is_cheating() {
    let f = Fixture::new();
    let settle = f.receipt(0, PRICE + 1);
    assert_eq!(
        cheat(paid(&f, &f.state(0, 0), &settle)),
        "charged more than the offered maximum"
    );
}

#[test]
fn a_cumulative_other_than_previous_plus_charge_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(300, 10);
    set_cumulative(&mut settle, 305);
    assert_eq!(
        cheat(paid(&f, &f.state(300, 0), &settle)),
        "cumulative is not previous + charge"
    );
}

#[test]
fn a_cumulative_above_the_signed_voucher_is_cheating() {
    // Our voucher signed previous + price. With charge ≤ price and cumulative =
    // previous + charge, a cumulative above it is always caught by one of those two
    // first; this rule keeps the ceiling explicit should either ever be relaxed.
    let f = Fixture::new();
    let state = f.state(300, 0);
    let above = 300 + PRICE + 1;
    let mut overcharged = f.receipt(300, PRICE + 1);
    set_cumulative(&mut overcharged, above);
    assert_eq!(
        cheat(paid(&f, &state, &overcharged)),
        "charged more than the offered maximum"
    );
    let mut inflated = f.receipt(300, 10);
    set_cumulative(&mut inflated, above);
    assert_eq!(
        cheat(paid(&f, &state, &inflated)),
        "cumulative is not previous + charge"
    );
    let full = f.receipt(300, PRICE);
    assert_eq!(paid(&f, &state, &full).map(|s| s.charged), Ok(300 + PRICE));
}

#[test]
fn a_deposit_amount_that_differs_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 10);
    settle.amount = Some("1999".into());
    let result = check(
        &f.state(0, 0),
        &f.terms(),
        Response::Paid {
            settle: &settle,
            deposit: Some(2000),
        },
    );
    assert_eq!(cheat(result), "deposit amount differs");
}

#[test]
fn a_failed_request_charges_nothing() {
    let f = Fixture::new();
    let mut settle = f.receipt(0, 0);
    settle.amount = Some("2000".into());
    let failed = |settle| {
        check(
            &f.state(0, 0),
            &f.terms(),
            Response::Failed {
                settle,
                deposit: Some(2000),
            },
        )
    };
    let next = failed(&settle).expect("a zero receipt is honest");
    assert_eq!((next.charged, next.deposited), (0, 2000));
    let charging = f.receipt(0, 1);
    assert_eq!(cheat(failed(&charging)), "charged a failed request");
    // A receipt saying the settlement itself failed (503 while the store is down) has no
    // channel state: the client keeps its own, and does not call the server a cheat.
    let refused = SettleResponse {
        success: false,
        error_reason: Some("unexpected_settle_error".into()),
        extra: None,
        ..f.receipt(0, 0)
    };
    let kept = failed(&refused).expect("a failure receipt is not a cheat");
    assert_eq!((kept.charged, kept.deposited), (0, 0));
}

fn stream(
    f: &Fixture,
    settle: &SettleResponse,
    progress: StreamProgress,
    last: bool,
) -> Result<ChannelState, Cheat> {
    check(
        &f.state(500, 0),
        &f.terms(),
        Response::Stream {
            settle,
            progress,
            last,
        },
    )
}

const PROGRESS: StreamProgress = StreamProgress {
    base: 500,
    signed: 500 + 2 * PRICE,
    confirmed: 50,
    deposit: Some(2000),
};

#[test]
fn a_stream_checkpoint_counts_against_the_stream_baseline() {
    let f = Fixture::new();
    let next = stream(&f, &f.receipt(500, 150), PROGRESS, false).expect("honest");
    assert_eq!((next.charged, next.requests), (650, 1));
    let mut end = f.receipt(500, 150);
    end.amount = Some("2000".into());
    let next = stream(&f, &end, PROGRESS, true).expect("honest");
    // The deposit was counted when the stream started, not again at its end.
    assert_eq!((next.charged, next.requests, next.deposited), (650, 2, 0));
}

#[test]
fn a_stream_whose_charge_goes_down_is_cheating() {
    let f = Fixture::new();
    let settle = f.receipt(500, 40);
    assert_eq!(
        cheat(stream(&f, &settle, PROGRESS, false)),
        "the stream's charge went down"
    );
}

#[test]
fn a_stream_charged_above_its_vouchers_is_cheating() {
    let f = Fixture::new();
    let settle = f.receipt(500, 2 * PRICE + 1);
    assert_eq!(
        cheat(stream(&f, &settle, PROGRESS, false)),
        "charged more than the vouchers signed for this stream"
    );
}

#[test]
fn a_stream_cumulative_off_its_baseline_is_cheating() {
    let f = Fixture::new();
    let mut settle = f.receipt(500, 60);
    set_cumulative(&mut settle, 600);
    assert_eq!(
        cheat(stream(&f, &settle, PROGRESS, false)),
        "cumulative is not previous + charge"
    );
}

#[test]
fn a_stream_end_checks_the_deposit_and_a_checkpoint_does_not() {
    let f = Fixture::new();
    let settle = f.receipt(500, 60);
    assert!(stream(&f, &settle, PROGRESS, false).is_ok());
    assert_eq!(
        cheat(stream(&f, &settle, PROGRESS, true)),
        "deposit amount differs"
    );
}

fn corrective(
    f: &Fixture,
    state: &ChannelState,
    required: &PaymentRequired,
) -> Result<ChannelState, Cheat> {
    check(state, &f.terms(), Response::Corrective(required))
}

#[test]
fn a_corrective_402_with_our_signature_is_adopted() {
    let f = Fixture::new();
    let required = f.corrective(400, 0, Some(f.voucher(&f.key, 400)));
    let next = corrective(&f, &f.state(300, 0), &required).expect("proven");
    assert_eq!((next.charged, next.balance), (400, 1_000));
}

#[test]
fn a_corrective_402_covered_by_the_chain_is_adopted() {
    let f = Fixture::new();
    let required = f.corrective(400, 400, None);
    let next = corrective(&f, &f.state(300, 0), &required).expect("claimed on chain");
    assert_eq!(next.charged, 400);
}

#[test]
fn a_corrective_402_lowering_the_charge_needs_no_proof() {
    let f = Fixture::new();
    let required = f.corrective(200, 0, None);
    let next = corrective(&f, &f.state(300, 0), &required).expect("lower");
    assert_eq!(next.charged, 200);
}

#[test]
fn a_corrective_402_signed_by_another_key_is_cheating() {
    let f = Fixture::new();
    let other = PrivateKeySigner::random();
    let required = f.corrective(400, 0, Some(f.voucher(&other, 400)));
    assert_eq!(
        cheat(corrective(&f, &f.state(300, 0), &required)),
        "corrective 402 claims charges we never signed"
    );
}

#[test]
fn a_corrective_402_whose_voucher_does_not_cover_it_is_cheating() {
    let f = Fixture::new();
    let required = f.corrective(400, 0, Some(f.voucher(&f.key, 399)));
    assert_eq!(
        cheat(corrective(&f, &f.state(300, 0), &required)),
        "corrective 402 claims charges we never signed"
    );
    let unproven = f.corrective(400, 0, None);
    assert_eq!(
        cheat(corrective(&f, &f.state(300, 0), &unproven)),
        "corrective 402 claims charges we never signed"
    );
}

#[test]
fn a_corrective_402_without_an_offer_or_state_or_for_another_channel_is_cheating() {
    let f = Fixture::new();
    let state = f.state(300, 0);
    let mut none = f.corrective(300, 0, None);
    none.accepts.clear();
    assert_eq!(
        cheat(corrective(&f, &state, &none)),
        "corrective 402 without an offer"
    );
    let mut stateless = f.corrective(300, 0, None);
    stateless.accepts[0].extra.remove("channelState");
    assert_eq!(
        cheat(corrective(&f, &state, &stateless)),
        "corrective 402 without channelState"
    );
    let mut elsewhere = f.corrective(300, 0, None);
    elsewhere.accepts[0].extra["channelState"]["channelId"] = json!(B256::repeat_byte(9));
    assert_eq!(
        cheat(corrective(&f, &state, &elsewhere)),
        "corrective 402 for another channel"
    );
}

#[test]
fn a_refund_answer_for_another_channel_is_cheating() {
    let f = Fixture::new();
    let state = f.state(300, 1_000);
    let refund = |settle: &SettleResponse| check(&state, &f.terms(), Response::Refund(settle));
    let mut settle = f.receipt(300, 0);
    if let Some(cs) = settle.extra.as_mut().and_then(|e| e.channel_state.as_mut()) {
        cs.balance = 300;
    }
    assert_eq!(refund(&settle).map(|s| s.balance), Ok(300));
    let mut elsewhere = settle.clone();
    if let Some(cs) = elsewhere
        .extra
        .as_mut()
        .and_then(|e| e.channel_state.as_mut())
    {
        cs.channel_id = B256::repeat_byte(8);
    }
    assert_eq!(
        cheat(refund(&elsewhere)),
        "refund response for another channel"
    );
    let mut bare = settle;
    bare.extra = None;
    assert_eq!(refund(&bare), Ok(state.clone()));
}
