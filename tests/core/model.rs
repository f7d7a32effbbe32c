//! Property test: random interleavings of requests, handler outcomes, claims, withdrawals
//! and store restarts against a simple reference model of the spec's cumulative rules.

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Bytes;
use proptest::prelude::*;
use x402_upto::ledger::{OnchainState, Receipt, Reservation};
use x402_upto::store::persist;
use x402_upto::typed_data::{ChannelId, sign_voucher};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Durability, Ledger, Reason, SledOptions, SledStore, Store};

use crate::helpers::{config, domain, payer};

const CHANNELS: usize = 3;

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Ceiling `charged + price`, signed by the payer.
    Valid,
    /// Ceiling off by `delta` from the valid one (stale or too large).
    Off(i8),
    /// The last accepted voucher, sent again.
    Replay,
    /// Right ceiling, wrong key.
    Forged,
    /// Right ceiling, signed for another channel.
    WrongChannel,
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// Handler succeeds and charges `actual % (price + 1)`.
    Commit(u128),
    /// Handler tries to charge more than the price, then gives up.
    Overcharge,
    /// Handler fails: the reservation is dropped.
    HandlerFails,
    /// The store write fails after staging: the staged commit is dropped.
    StoreFails,
}

#[derive(Clone, Debug)]
enum Op {
    Request {
        ch: usize,
        price: u128,
        kind: Kind,
        outcome: Outcome,
    },
    /// A second request while the first holds the channel.
    Concurrent {
        ch: usize,
        price: u128,
        actual: u128,
    },
    /// A confirmed claim of `pct`% of the unclaimed charge.
    Claim {
        ch: usize,
        pct: u128,
    },
    Withdraw {
        ch: usize,
        on: bool,
    },
    TopUp {
        ch: usize,
        amount: u128,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let ch = 0..CHANNELS;
    let kind = prop_oneof![
        6 => Just(Kind::Valid),
        2 => (-3i8..=3).prop_filter("non-zero", |d| *d != 0).prop_map(Kind::Off),
        1 => Just(Kind::Replay),
        1 => Just(Kind::Forged),
        1 => Just(Kind::WrongChannel),
    ];
    let outcome = prop_oneof![
        6 => (0u128..1_000).prop_map(Outcome::Commit),
        1 => Just(Outcome::Overcharge),
        1 => Just(Outcome::HandlerFails),
        1 => Just(Outcome::StoreFails),
    ];
    prop_oneof![
        10 => (ch.clone(), 0u128..=50, kind, outcome)
            .prop_map(|(ch, price, kind, outcome)| Op::Request { ch, price, kind, outcome }),
        2 => (ch.clone(), 1u128..=50, 0u128..=50)
            .prop_map(|(ch, price, actual)| Op::Concurrent { ch, price, actual: actual.min(price) }),
        2 => (ch.clone(), 0u128..=100).prop_map(|(ch, pct)| Op::Claim { ch, pct }),
        1 => (ch.clone(), any::<bool>()).prop_map(|(ch, on)| Op::Withdraw { ch, on }),
        1 => (ch, 0u128..300).prop_map(|(ch, amount)| Op::TopUp { ch, amount }),
        1 => Just(Op::Restart),
    ]
}

/// The reference: the spec's state table, nothing else.
#[derive(Clone, Debug, Default)]
struct Model {
    charged: u128,
    signed_max: u128,
    last_voucher: Option<(u128, Bytes)>,
    onchain: OnchainState,
    version: u64,
    /// Sum of actual charges of served requests.
    served: u128,
}

impl Model {
    fn decide(&self, max: u128, price: u128, forged: bool) -> Result<(), Reason> {
        if forged {
            return Err(Reason::VoucherSignature);
        }
        if self.onchain.withdraw_requested_at != 0 {
            return Err(Reason::CumulativeExceedsBalance);
        }
        if self.charged.checked_add(price) != Some(max) {
            return Err(Reason::CumulativeAmountMismatch);
        }
        if max > self.onchain.balance {
            return Err(Reason::CumulativeExceedsBalance);
        }
        if max <= self.onchain.total_claimed {
            return Err(Reason::CumulativeBelowClaimed);
        }
        Ok(())
    }
}

struct World {
    dir: tempfile::TempDir,
    store: Option<SledStore>,
    ledger: Ledger,
    ids: Vec<ChannelId>,
    models: Vec<Model>,
    key: PrivateKeySigner,
    intruder: PrivateKeySigner,
    rt: tokio::runtime::Runtime,
}

impl World {
    fn new(balances: &[u128]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = payer(1);
        let ledger = Ledger::new(domain());
        let mut ids = Vec::new();
        let mut models = Vec::new();
        for (i, &balance) in balances.iter().enumerate() {
            let onchain = OnchainState {
                balance,
                ..Default::default()
            };
            let (id, _) = ledger.upsert_from_chain(config(key.address(), i as u64), onchain, 0);
            ids.push(id);
            models.push(Model {
                onchain,
                ..Default::default()
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = Some(open(&dir));
        Self {
            dir,
            store,
            ledger,
            ids,
            models,
            key,
            intruder: payer(9),
            rt,
        }
    }

    fn store(&self) -> &SledStore {
        self.store.as_ref().expect("open between restarts")
    }

    fn sign(&self, key: &PrivateKeySigner, id: ChannelId, max: u128) -> Bytes {
        Bytes::from(
            sign_voucher(key, &domain(), id, max)
                .expect("sign")
                .as_bytes(),
        )
    }

    fn restart(&mut self) -> Result<(), TestCaseError> {
        self.store = None; // a clean close: the flusher finishes, sled releases its lock
        let store = open(&self.dir);
        let records = self.rt.block_on(store.load_all()).expect("load");
        let ledger = Ledger::new(domain());
        ledger.restore(records);
        // On start the server re-reads the chain for every channel.
        for (i, m) in self.models.iter().enumerate() {
            ledger.upsert_from_chain(config(self.key.address(), i as u64), m.onchain, 1);
        }
        for (id, m) in self.ids.iter().zip(&self.models) {
            let r = ledger.record(id).expect("restored or re-seen");
            prop_assert_eq!(
                (r.charged, r.signed_max_claimable, r.version),
                (m.charged, m.signed_max, m.version)
            );
            prop_assert_eq!(
                r.last_voucher().map(|v| v.signature),
                m.last_voucher.clone().map(|v| v.1)
            );
        }
        self.store = Some(store);
        self.ledger = ledger;
        Ok(())
    }
}

fn open(dir: &tempfile::TempDir) -> SledStore {
    // Durability is not what this property is about (tests/crash.rs is); skip the fdatasync.
    let options = SledOptions {
        durability: Durability::Group,
        fdatasync: false,
        ..SledOptions::default()
    };
    SledStore::open(dir.path(), options).expect("open")
}

fn run(balances: Vec<u128>, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut w = World::new(&balances);
    for op in ops {
        let before: Vec<_> = w.ids.iter().map(|id| w.ledger.record(id)).collect();
        match op {
            Op::Request {
                ch,
                price,
                kind,
                outcome,
            } => request(&mut w, ch, price, kind, outcome, &before)?,
            Op::Concurrent { ch, price, actual } => concurrent(&mut w, ch, price, actual, &before)?,
            Op::Claim { ch, pct } => {
                let m = &mut w.models[ch];
                let target =
                    m.onchain.total_claimed + (m.charged - m.onchain.total_claimed) * pct / 100;
                m.onchain.total_claimed = m.onchain.total_claimed.max(target);
                w.ledger.apply_claim(&w.ids[ch], target, 2).expect("known");
            }
            Op::Withdraw { ch, on } => {
                w.models[ch].onchain.withdraw_requested_at = if on { 1_700_000_000 } else { 0 };
                w.ledger
                    .refresh(&w.ids[ch], w.models[ch].onchain, 2)
                    .expect("known");
            }
            Op::TopUp { ch, amount } => {
                w.models[ch].onchain.balance += amount;
                w.ledger
                    .refresh(&w.ids[ch], w.models[ch].onchain, 2)
                    .expect("known");
            }
            Op::Restart => w.restart()?,
        }
        check_invariants(&w, &before)?;
    }
    w.restart()
}

fn request(
    w: &mut World,
    ch: usize,
    price: u128,
    kind: Kind,
    outcome: Outcome,
    before: &[Option<x402_upto::ChannelRecord>],
) -> Result<(), TestCaseError> {
    let id = w.ids[ch];
    let m = w.models[ch].clone();
    let valid = m.charged + price;
    let (max, signature, forged) = match kind {
        Kind::Valid => (valid, w.sign(&w.key, id, valid), false),
        Kind::Off(d) => {
            let max = valid.saturating_add_signed(i128::from(d));
            (max, w.sign(&w.key, id, max), false)
        }
        Kind::Replay => match &m.last_voucher {
            Some((max, sig)) => (*max, sig.clone(), false),
            None => (valid, w.sign(&w.key, id, valid), false),
        },
        Kind::Forged => (valid, w.sign(&w.intruder, id, valid), true),
        Kind::WrongChannel => {
            let other = w.ids[(ch + 1) % CHANNELS];
            (valid, w.sign(&w.key, other, valid), true)
        }
    };
    let decision = m.decide(max, price, forged);
    let got = w.ledger.verify_and_reserve(
        SignedVoucher {
            channel_id: id,
            max_claimable: max,
            signature: signature.clone(),
        },
        price,
    );
    let reservation = match (got, decision) {
        (Ok(r), Ok(())) => r,
        (Err(e), Err(want)) => {
            prop_assert_eq!(e.reason, want);
            prop_assert_eq!(
                &w.ledger.record(&id),
                &before[ch],
                "a rejected input changed state"
            );
            return Ok(());
        }
        (got, want) => {
            return Err(TestCaseError::fail(format!(
                "ledger {:?} vs model {want:?}",
                got.map(|_| ())
            )));
        }
    };
    // Accepted: the voucher is exactly charged + price.
    prop_assert_eq!(max, m.charged + price);
    match outcome {
        Outcome::Commit(a) => {
            let actual = a % (price + 1);
            let receipt = commit_accepted(w, ch, reservation, actual, max, 3)?;
            let m = &w.models[ch];
            prop_assert_eq!(receipt.snapshot.charged, m.charged);
            prop_assert_eq!(receipt.version, m.version);
            prop_assert!(m.signed_max <= m.onchain.balance, "accepted above balance");
        }
        Outcome::Overcharge => {
            let refused = reservation.commit(price + 1, 3).expect_err("over price");
            prop_assert_eq!(refused.reject.reason, Reason::ChargeExceedsSignedCumulative);
        }
        Outcome::HandlerFails => drop(reservation),
        Outcome::StoreFails => drop(
            reservation
                .commit(0, 3)
                .map_err(|r| TestCaseError::fail(r.reject.to_string()))?,
        ),
    }
    if !matches!(outcome, Outcome::Commit(_)) {
        prop_assert_eq!(
            &w.ledger.record(&id),
            &before[ch],
            "an unserved request changed state"
        );
    }
    Ok(())
}

fn receipt_signature(ledger: &Ledger, id: &ChannelId) -> Bytes {
    ledger
        .last_voucher(id)
        .map(|v| v.signature)
        .unwrap_or_default()
}

fn concurrent(
    w: &mut World,
    ch: usize,
    price: u128,
    actual: u128,
    before: &[Option<x402_upto::ChannelRecord>],
) -> Result<(), TestCaseError> {
    let id = w.ids[ch];
    let max = w.models[ch].charged + price;
    let voucher = SignedVoucher {
        channel_id: id,
        max_claimable: max,
        signature: w.sign(&w.key, id, max),
    };
    let Ok(first) = w.ledger.verify_and_reserve(voucher.clone(), price) else {
        return Ok(()); // refused for another reason: covered by `request`
    };
    let second = w
        .ledger
        .verify_and_reserve(voucher, price)
        .map_err(|e| e.reason);
    prop_assert_eq!(second.err(), Some(Reason::ChannelBusy));
    prop_assert_eq!(&w.ledger.record(&id), &before[ch]);
    commit_accepted(w, ch, first, actual, max, 4)?;
    Ok(())
}

/// The accepted path: commits `actual` on the reservation of a voucher for `max`, persists
/// it and moves the model of channel `ch` along.
fn commit_accepted(
    w: &mut World,
    ch: usize,
    reservation: Reservation,
    actual: u128,
    max: u128,
    now: u64,
) -> Result<Receipt, TestCaseError> {
    let id = w.ids[ch];
    let staged = reservation
        .commit(actual, now)
        .map_err(|r| TestCaseError::fail(r.reject.to_string()))?;
    let receipt =
        w.rt.block_on(persist(w.store(), staged))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let m = &mut w.models[ch];
    m.charged += actual;
    m.served += actual;
    m.signed_max = max;
    m.last_voucher = Some((max, receipt_signature(&w.ledger, &id)));
    m.version += 1;
    Ok(receipt)
}

fn check_invariants(
    w: &World,
    before: &[Option<x402_upto::ChannelRecord>],
) -> Result<(), TestCaseError> {
    let claimable = w.ledger.claimable();
    for (i, (id, m)) in w.ids.iter().zip(&w.models).enumerate() {
        let r = w.ledger.record(id).expect("known");
        let prev = before[i].as_ref().map_or(0, |p| p.charged);
        prop_assert!(r.charged >= prev, "charged decreased");
        prop_assert!(
            r.charged <= r.signed_max_claimable,
            "charged above the signed ceiling"
        );
        prop_assert_eq!(r.charged, m.charged);
        prop_assert_eq!(
            r.charged,
            m.served,
            "charged is not the sum of served charges"
        );
        prop_assert_eq!(r.signed_max_claimable, m.signed_max);
        prop_assert!(!w.ledger.is_held(id), "a channel stayed held");
        for c in claimable.iter().filter(|c| c.channel_id == *id) {
            prop_assert!(
                c.claim_total <= m.served,
                "could claim more than was served"
            );
            prop_assert!(c.claim_total <= c.max_claimable);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_ledger_and_store_follow_the_reference_model(
        balances in prop::collection::vec(0u128..400, CHANNELS),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(balances, ops)?;
    }
}
