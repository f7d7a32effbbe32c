//! Building the messages the server sends: the offer, the 402, and `PAYMENT-RESPONSE`.

use std::sync::Arc;

use alloy_primitives::{Address, B256};
use parking_lot::RwLock;
use serde_json::{Map, Value};

use crate::engine::EngineConfig;
use crate::ledger::{ChannelSnapshot, Mismatch, Receipt, Reject};
use crate::wire::{
    BATCH_SETTLEMENT, ChannelStateWire, PaymentRequired, PaymentRequirements, PaymentResponseExtra,
    PreparedOffer, ResourceInfo, SettleResponse, VoucherStateWire, X402_VERSION,
};

/// How many prices keep their prepared offer (a route has one price, or a few).
const CACHED_OFFERS: usize = 32;

/// Our offers by price, each built once: building one checksums three addresses and
/// copies `extra`, which a paid request should not pay for.
#[derive(Debug, Default)]
pub(crate) struct Offers {
    by_price: RwLock<Vec<(u128, Arc<PreparedOffer>)>>,
}

impl Offers {
    /// The offer for `price`, from the cache or built (and cached while there is room:
    /// a price computed per request beyond [`CACHED_OFFERS`] distinct ones is built each
    /// time, as before the cache).
    pub(crate) fn get(&self, c: &EngineConfig, price: u128) -> Arc<PreparedOffer> {
        if let Some((_, offer)) = self.by_price.read().iter().find(|(p, _)| *p == price) {
            return Arc::clone(offer);
        }
        let offer = Arc::new(PreparedOffer::new(requirements(c, price)));
        let mut cache = self.by_price.write();
        if cache.len() < CACHED_OFFERS && !cache.iter().any(|(p, _)| *p == price) {
            cache.push((price, Arc::clone(&offer)));
        }
        offer
    }
}

/// Our `accepts[]` entry for maximum price `price`.
pub(crate) fn requirements(c: &EngineConfig, price: u128) -> PaymentRequirements {
    let mut extra = c.extra.clone();
    extra.insert("name".into(), Value::String(c.asset_name.clone()));
    extra.insert("version".into(), Value::String(c.asset_version.clone()));
    extra.insert(
        "receiverAuthorizer".into(),
        Value::String(c.receiver_authorizer.to_checksum(None)),
    );
    extra.insert("withdrawDelay".into(), Value::from(c.withdraw_delay));
    PaymentRequirements {
        scheme: BATCH_SETTLEMENT.into(),
        network: c.network.to_string(),
        amount: price.to_string(),
        asset: c.asset.to_checksum(None),
        pay_to: c.pay_to.to_checksum(None),
        max_timeout_seconds: c.max_timeout_seconds,
        extra,
    }
}

pub(crate) fn payment_required(
    resource: &ResourceInfo,
    offer: PaymentRequirements,
    error: Option<String>,
) -> PaymentRequired {
    PaymentRequired {
        x402_version: X402_VERSION,
        error: Some(error.unwrap_or_else(|| "Payment required".into())),
        resource: resource.clone(),
        accepts: vec![offer],
        extensions: None,
    }
}

/// The spec's `channelState` object for a snapshot.
pub fn channel_state_wire(s: &ChannelSnapshot) -> ChannelStateWire {
    ChannelStateWire {
        channel_id: s.channel_id.0,
        balance: s.balance,
        total_claimed: s.total_claimed,
        withdraw_requested_at: s.withdraw_requested_at,
        refund_nonce: s.refund_nonce,
        charged_cumulative_amount: Some(s.charged),
    }
}

/// Adds `channelState` and `voucherState` to the offer of a corrective 402.
pub(crate) fn add_corrective(required: &mut PaymentRequired, m: &Mismatch) {
    let state = serde_json::to_value(channel_state_wire(&m.state)).unwrap_or(Value::Null);
    let voucher = m.last_voucher.as_ref().map(|v| VoucherStateWire {
        signed_max_claimable: Some(v.signed_max_claimable),
        signature: Some(v.signature.clone()),
    });
    for offer in &mut required.accepts {
        offer.extra.insert("channelState".into(), state.clone());
        if let Some(v) = &voucher {
            offer.extra.insert(
                "voucherState".into(),
                serde_json::to_value(v).unwrap_or(Value::Null),
            );
        }
    }
}

/// Payers' checksummed addresses, as `PAYMENT-RESPONSE` writes them: EIP-55 costs a keccak
/// per formatting, and a payer pays many times. Bounded: a shard that fills is emptied (a
/// payer seen again is formatted once more), so a flood of payers cannot grow it.
#[derive(Debug)]
pub(crate) struct PayerNames {
    shards: Box<[parking_lot::Mutex<NameShard>]>,
}

type NameShard = std::collections::HashMap<Address, Arc<str>>;

impl PayerNames {
    const SHARDS: usize = 16;
    const PER_SHARD: usize = 4_096;

    /// `payer`'s EIP-55 form.
    pub(crate) fn get(&self, payer: Address) -> Arc<str> {
        let shard = &self.shards[usize::from(payer.0[19]) % Self::SHARDS];
        if let Some(name) = shard.lock().get(&payer) {
            return Arc::clone(name);
        }
        let name: Arc<str> = payer.to_checksum(None).into();
        let mut names = shard.lock();
        if names.len() >= Self::PER_SHARD {
            names.clear();
        }
        names.insert(payer, Arc::clone(&name));
        name
    }
}

impl Default for PayerNames {
    fn default() -> Self {
        Self {
            shards: (0..Self::SHARDS).map(|_| Default::default()).collect(),
        }
    }
}

/// `PAYMENT-RESPONSE` of a paid request (voucher, or deposit + voucher).
pub(crate) fn paid_response(
    c: &EngineConfig,
    receipt: &Receipt,
    payer: &str,
    deposit: Option<(B256, u128)>,
) -> SettleResponse {
    let (transaction, amount) = match deposit {
        Some((tx, amount)) => (tx.to_string(), amount.to_string()),
        None => (String::new(), String::new()),
    };
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(payer.to_owned()),
        transaction,
        network: c.network.to_string(),
        amount: Some(amount),
        extra: Some(PaymentResponseExtra {
            charged_amount: Some(receipt.charged_amount),
            channel_state: Some(channel_state_wire(&receipt.snapshot)),
            voucher_state: None,
            other: Map::new(),
        }),
        extensions: None,
    }
}

/// `PAYMENT-RESPONSE` of a cooperative refund: no `chargedAmount`.
pub(crate) fn refund_response(
    c: &EngineConfig,
    payer: Address,
    after: &ChannelSnapshot,
    tx: B256,
    refunded: u128,
) -> SettleResponse {
    SettleResponse {
        success: true,
        error_reason: None,
        error_message: None,
        payer: Some(payer.to_checksum(None)),
        transaction: tx.to_string(),
        network: c.network.to_string(),
        amount: Some(refunded.to_string()),
        extra: Some(PaymentResponseExtra {
            charged_amount: None,
            channel_state: Some(channel_state_wire(after)),
            voucher_state: None,
            other: Map::new(),
        }),
        extensions: None,
    }
}

/// A failed `PAYMENT-RESPONSE` (nothing was charged).
pub fn failed_response(c: &EngineConfig, reject: &Reject) -> SettleResponse {
    SettleResponse {
        success: false,
        error_reason: Some(reject.reason.as_str().into()),
        error_message: Some(reject.to_string()),
        payer: None,
        transaction: String::new(),
        network: c.network.to_string(),
        amount: None,
        extra: None,
        extensions: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payer_names_are_eip55_and_the_cache_stays_bounded() {
        let names = PayerNames::default();
        let payer = Address::repeat_byte(0xab);
        assert_eq!(&*names.get(payer), payer.to_checksum(None).as_str());
        assert!(Arc::ptr_eq(&names.get(payer), &names.get(payer)));
        // A flood of distinct payers on one shard: it never holds more than its bound.
        for i in 0..3 * PayerNames::PER_SHARD as u32 {
            let mut bytes = [0u8; 20];
            bytes[..4].copy_from_slice(&i.to_be_bytes());
            let flood = Address::from(bytes);
            assert_eq!(&*names.get(flood), flood.to_checksum(None).as_str());
        }
        let fullest = names.shards.iter().map(|s| s.lock().len()).max();
        assert!(fullest <= Some(PayerNames::PER_SHARD), "{fullest:?}");
    }
}
