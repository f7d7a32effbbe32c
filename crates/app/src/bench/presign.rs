//! The timed phase's vouchers, signed beforehand on every core, and the `PAYMENT-SIGNATURE`
//! template they are spliced into at send time.

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{B256, keccak256};
use base64::Engine as _;
use serde_json::{Value, json};
use x402_upto::typed_data::{ChannelId, EscrowDomain};
use x402_upto::wire::{ChannelConfigWire, PaymentRequirements};

/// One virtual client ready for the timed phase.
pub(super) struct Prepared {
    pub(super) template: Template,
    /// `charged + price` of voucher 0; voucher `k` adds `k × charge`.
    pub(super) first_max: u128,
    pub(super) signatures: Vec<[u8; 65]>,
}

/// The `PAYMENT-SIGNATURE` JSON with the amount and the signature cut out.
#[derive(Clone)]
pub(super) struct Template {
    /// `[before first hole, between, after]`.
    parts: [String; 3],
    /// The amount comes before the signature in the serialized text.
    max_first: bool,
}

/// Vouchers per virtual client of a stateless target, used round robin.
pub(super) const CYCLE_POOL: u64 = 1000;

const MAX_HOLE: &str = "MAX_CLAIMABLE_HOLE";
const SIG_HOLE: &str = "SIGNATURE_HOLE";

impl Template {
    pub(super) fn new(
        offer: &PaymentRequirements,
        resource: &Value,
        config: &ChannelConfigWire,
        id: ChannelId,
    ) -> Option<Self> {
        let envelope = json!({
            "x402Version": 2,
            "accepted": offer,
            "resource": resource,
            "payload": {"type": "voucher", "channelConfig": config,
                        "voucher": {"channelId": id.0, "maxClaimableAmount": MAX_HOLE, "signature": SIG_HOLE}},
        });
        let text = serde_json::to_string(&envelope).ok()?;
        let (m, s) = (text.find(MAX_HOLE)?, text.find(SIG_HOLE)?);
        let (first, first_len, second, second_len) = if m < s {
            (m, MAX_HOLE.len(), s, SIG_HOLE.len())
        } else {
            (s, SIG_HOLE.len(), m, MAX_HOLE.len())
        };
        Some(Self {
            parts: [
                text[..first].to_owned(),
                text[first + first_len..second].to_owned(),
                text[second + second_len..].to_owned(),
            ],
            max_first: m < s,
        })
    }

    pub(super) fn render(&self, max: u128, sig: &[u8; 65]) -> String {
        let max = max.to_string();
        let sig = format!("0x{}", hex::encode(sig));
        let (a, b) = if self.max_first {
            (max.as_str(), sig.as_str())
        } else {
            (sig.as_str(), max.as_str())
        };
        let mut json =
            String::with_capacity(self.parts.iter().map(String::len).sum::<usize>() + 200);
        json.push_str(&self.parts[0]);
        json.push_str(a);
        json.push_str(&self.parts[1]);
        json.push_str(b);
        json.push_str(&self.parts[2]);
        base64::engine::general_purpose::STANDARD.encode(json)
    }
}

pub(super) fn salt(label: &str, index: usize) -> B256 {
    keccak256(format!("x402-upto bench {label} client {index}").as_bytes())
}

/// Signs `n` vouchers for channel `id`, `first_max + k·step`, on every core.
pub(super) fn presign(
    payer: &PrivateKeySigner,
    domain: &EscrowDomain,
    id: ChannelId,
    first_max: u128,
    step: u128,
    n: usize,
) -> Result<Vec<[u8; 65]>, String> {
    let key = secp256k1::SecretKey::from_byte_array(payer.to_bytes().0)
        .map_err(|e| format!("payer key: {e}"))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .max(1);
    let mut out = vec![[0u8; 65]; n];
    let chunk = n.div_ceil(threads).max(1);
    std::thread::scope(|s| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            let domain = domain.clone();
            s.spawn(move || {
                for (j, slot) in part.iter_mut().enumerate() {
                    let k = (c * chunk + j) as u128;
                    let digest = domain.voucher_digest(id, first_max + k * step);
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
