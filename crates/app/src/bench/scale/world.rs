//! The channels every process of the scale bench agrees on: one payer, channel `i` with salt
//! `i` on the test kit's off-chain domain, the offer they match, and the state a seeded
//! (idle) channel starts from. Deterministic, so the seeder, the server and the load
//! generator never have to exchange channel lists.

use std::sync::OnceLock;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{B256, Bytes, keccak256};
use x402_upto::EngineConfig;
use x402_upto::ledger::{ChannelRecord, OnchainState};
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain};
use x402_upto::wire::{ChannelConfigWire, Eip155Network};

/// Route price (the voucher of a request signs `charged + PRICE`).
pub const PRICE: u128 = 1_000;
/// What the server's handler charges per request (an "upto" charge below the price).
pub const CHARGE: u128 = 500;
/// `charged` of a seeded channel: an idle channel that has served 1,000 requests.
pub const SEED_CHARGED: u128 = 1_000 * CHARGE;
/// Mirrored balance of a seeded channel: enough for any run.
pub const SEED_BALANCE: u128 = 1_000_000_000_000;

/// The payer (and payer authorizer) of every scale channel.
pub fn payer() -> &'static PrivateKeySigner {
    static PAYER: OnceLock<PrivateKeySigner> = OnceLock::new();
    PAYER.get_or_init(|| {
        PrivateKeySigner::from_bytes(&keccak256(b"x402-upto scale payer"))
            .or_else(|_| PrivateKeySigner::from_bytes(&B256::with_last_byte(1)))
            .unwrap_or_else(|_| PrivateKeySigner::random())
    })
}

/// The voucher domain of the server (chain 31337, escrow `0xeeee…`; no chain is involved).
pub fn domain() -> EscrowDomain {
    x402_upto_testkit::offchain::domain()
}

/// Config of channel `index`: the test kit's receiver `0x0a…`, receiver authorizer `0x0b…`,
/// token `0x0c…`, 900 s withdraw delay.
pub fn config(index: u64) -> ChannelConfig {
    x402_upto_testkit::offchain::channel_config(payer().address(), index)
}

/// The `channelConfig` JSON of `config`.
pub fn wire(config: &ChannelConfig) -> ChannelConfigWire {
    ChannelConfigWire {
        payer: config.payer,
        payer_authorizer: config.payerAuthorizer,
        receiver: config.receiver,
        receiver_authorizer: config.receiverAuthorizer,
        token: config.token,
        withdraw_delay: config.withdrawDelay.to::<u64>(),
        salt: config.salt,
    }
}

/// The server's offer: the fields the seeded configs were made to match.
pub fn engine_config() -> EngineConfig {
    let c = config(0);
    EngineConfig {
        network: Eip155Network(domain().chain_id()),
        pay_to: c.receiver,
        asset: c.token,
        asset_name: x402_upto_testkit::devnet::TOKEN_NAME.into(),
        asset_version: x402_upto_testkit::devnet::TOKEN_VERSION.into(),
        receiver_authorizer: c.receiverAuthorizer,
        withdraw_delay: 900,
        max_timeout_seconds: 300,
        extra: Default::default(),
    }
}

/// The record of an idle seeded channel, as the store would hold it after its last paid
/// request: `SEED_CHARGED` charged under a voucher for `SEED_CHARGED + CHARGE`, version 1.
/// The signature has the real length (65 bytes) but is not a real signature: the server
/// never verifies a stored voucher, only new ones, and claims are measured separately on
/// anvil with real ones.
pub fn seeded_record(index: u64, domain: &EscrowDomain, now: u64) -> ChannelRecord {
    let config = config(index);
    let id = domain.channel_id(&config);
    let mut signature = [0u8; 65];
    signature[..32].copy_from_slice(id.0.as_slice());
    signature[32..64].copy_from_slice(keccak256(id.0).as_slice());
    signature[64] = 27;
    ChannelRecord {
        channel_id: id,
        config,
        charged: SEED_CHARGED,
        signed_max_claimable: SEED_CHARGED + CHARGE,
        signature: Bytes::copy_from_slice(&signature),
        onchain: OnchainState {
            balance: SEED_BALANCE,
            ..Default::default()
        },
        onchain_synced_at: now,
        last_request_at: now,
        version: 1,
        refunds: Default::default(),
    }
}

/// The ceiling of the voucher of the `pass`-th request on a seeded channel since seeding.
pub fn voucher_max(pass: u64) -> u128 {
    SEED_CHARGED + u128::from(pass) * CHARGE + PRICE
}

/// Signs `(channel, max)` vouchers with `payer` on every core (libsecp256k1), in order.
pub fn sign_many(
    payer: &PrivateKeySigner,
    domain: &EscrowDomain,
    vouchers: &[(ChannelId, u128)],
) -> Result<Vec<[u8; 65]>, String> {
    let key = secp256k1::SecretKey::from_byte_array(payer.to_bytes().0)
        .map_err(|e| format!("payer key: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut out = vec![[0u8; 65]; vouchers.len()];
    let chunk = vouchers.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (part, todo) in out.chunks_mut(chunk).zip(vouchers.chunks(chunk)) {
            s.spawn(move || {
                for (slot, (id, max)) in part.iter_mut().zip(todo) {
                    let digest = domain.voucher_digest(*id, *max);
                    let msg = secp256k1::Message::from_digest(digest.0);
                    let (rec, rs) = secp256k1::SECP256K1
                        .sign_ecdsa_recoverable(msg, &key)
                        .serialize_compact();
                    slot[..64].copy_from_slice(&rs);
                    // Ethereum's v: 27 + recovery id (0 or 1 for a low-s signature).
                    slot[64] = 27 + i32::from(rec) as u8;
                }
            });
        }
    });
    Ok(out)
}

/// Resident set size of process `pid` (`"self"` for this one), bytes, from
/// `/proc/<pid>/status` (`VmRSS`).
pub fn rss_bytes(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of the files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
