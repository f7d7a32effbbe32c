//! Processes that the crash and fault tests start and kill (`x402-upto internal …`). Each
//! prints a line per acknowledged (durable) commit, so a test can check what survived.

pub mod settle_load;
pub mod store_load;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Bytes;
use x402_upto::error::Result;
use x402_upto::ledger::{Ledger, Reservation};
use x402_upto::typed_data::{ChannelId, EscrowDomain, sign_voucher};
use x402_upto::verify::SignedVoucher;

/// The next paid request of a load run on channel `id`: a voucher signed by `payer` for what
/// is charged plus `price`, reserved. The reservation and the voucher's ceiling.
fn reserve_next(
    ledger: &Ledger,
    domain: &EscrowDomain,
    payer: &PrivateKeySigner,
    id: ChannelId,
    price: u128,
) -> Result<(Reservation, u128)> {
    let charged = ledger.snapshot(&id).map(|s| s.charged).unwrap_or_default();
    let max = charged + price;
    let sig = sign_voucher(payer, domain, id, max)?;
    let voucher = SignedVoucher {
        channel_id: id,
        max_claimable: max,
        signature: Bytes::from(sig.as_bytes()),
    };
    Ok((ledger.verify_and_reserve(voucher, price)?, max))
}
