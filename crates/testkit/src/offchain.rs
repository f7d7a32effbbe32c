//! Channels and vouchers without a chain: the domain the chain double answers for,
//! deterministic payer keys, channel configs, on-chain snapshots and signed vouchers. The
//! core tests, the benches, the store-load harness and the settlement rig share these.

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256};
use x402_upto::ledger::OnchainState;
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain, sign_voucher};
use x402_upto::verify::SignedVoucher;

/// Chain 31337, escrow at `0xeeee…`: the domain of the engine fixture (`Fixture::new`).
pub fn domain() -> EscrowDomain {
    EscrowDomain::new(31337, Address::repeat_byte(0xee))
}

/// A deterministic payer key (index 0 is taken as 1: zero is no key).
pub fn payer(index: u8) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&B256::with_last_byte(index.max(1)))
        .expect("small scalars are valid keys")
}

/// `payer`'s channel (also its own payer authorizer) with `salt`: fixed receiver,
/// receiver authorizer and token, a 900 s withdraw delay.
pub fn channel_config(payer: Address, salt: u64) -> ChannelConfig {
    ChannelConfig {
        payer,
        payerAuthorizer: payer,
        receiver: Address::repeat_byte(0x0a),
        receiverAuthorizer: Address::repeat_byte(0x0b),
        token: Address::repeat_byte(0x0c),
        withdrawDelay: U40::from(900u64),
        salt: B256::from(U256::from(salt)),
    }
}

/// An on-chain snapshot with `balance` and nothing else.
pub fn onchain(balance: u128) -> OnchainState {
    OnchainState {
        balance,
        ..Default::default()
    }
}

/// `payer`'s signed voucher for `max` on channel `id`.
pub fn signed_voucher(
    payer: &PrivateKeySigner,
    domain: &EscrowDomain,
    id: ChannelId,
    max: u128,
) -> SignedVoucher {
    let sig = sign_voucher(payer, domain, id, max).expect("local signing");
    SignedVoucher {
        channel_id: id,
        max_claimable: max,
        signature: Bytes::copy_from_slice(&sig.as_bytes()),
    }
}
