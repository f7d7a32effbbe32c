//! Fixtures: a domain, payer keys, channels with balance, signed vouchers.

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256};
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain, sign_voucher};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Ledger, OnchainState};

pub fn domain() -> EscrowDomain {
    EscrowDomain::new(31337, Address::repeat_byte(0xee))
}

/// A deterministic payer key (index must be non-zero).
pub fn payer(index: u8) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&B256::with_last_byte(index.max(1)))
        .expect("small scalars are valid keys")
}

pub fn config(payer: Address, salt: u64) -> ChannelConfig {
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

pub fn onchain(balance: u128) -> OnchainState {
    OnchainState {
        balance,
        ..Default::default()
    }
}

/// A ledger with one channel of `balance`, paid by `payer(1)`.
pub fn ledger_with_channel(balance: u128) -> (Ledger, ChannelId, PrivateKeySigner) {
    let ledger = Ledger::new(domain());
    let key = payer(1);
    let (id, _) = ledger.upsert_from_chain(config(key.address(), 1), onchain(balance), 0);
    (ledger, id, key)
}

pub fn voucher(key: &PrivateKeySigner, id: ChannelId, max: u128) -> SignedVoucher {
    let sig = sign_voucher(key, &domain(), id, max).expect("local signing");
    SignedVoucher {
        channel_id: id,
        max_claimable: max,
        signature: Bytes::from(sig.as_bytes()),
    }
}
