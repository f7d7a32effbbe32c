//! Fixtures: a domain, payer keys, channels with balance, signed vouchers (the test kit's
//! [`offchain`](x402_upto_testkit::offchain) helpers, with the domain implied).

use alloy::signers::local::PrivateKeySigner;
use x402_upto::Ledger;
use x402_upto::ledger::StagedCommit;
use x402_upto::typed_data::ChannelId;
use x402_upto::verify::SignedVoucher;
use x402_upto_testkit::offchain::signed_voucher;
pub use x402_upto_testkit::offchain::{channel_config as config, domain, onchain, payer};

/// A ledger with one channel of `balance`, paid by `payer(1)`.
pub fn ledger_with_channel(balance: u128) -> (Ledger, ChannelId, PrivateKeySigner) {
    let ledger = Ledger::new(domain());
    let key = payer(1);
    let (id, _) = ledger.upsert_from_chain(config(key.address(), 1), onchain(balance), 0);
    (ledger, id, key)
}

pub fn voucher(key: &PrivateKeySigner, id: ChannelId, max: u128) -> SignedVoucher {
    signed_voucher(key, &domain(), id, max)
}

/// Reserves `price` with `voucher` and stages the commit of `charged` at `now`: a paid
/// request that went through, up to the durable write.
pub fn stage(
    ledger: &Ledger,
    voucher: SignedVoucher,
    price: u128,
    charged: u128,
    now: u64,
) -> StagedCommit {
    ledger
        .verify_and_reserve(voucher, price)
        .expect("reserve")
        .commit(charged, now)
        .expect("commit")
}
