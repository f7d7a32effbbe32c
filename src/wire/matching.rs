//! How a client's `accepted` requirements are matched against our offer.
//!
//! x402 v2 requires every core field to be equal and the server's `extra` to
//! be a recursive subset of the client's (clients may add keys, never drop or
//! change ours). Addresses are compared case-insensitively, since checksum
//! casing carries no meaning; amounts are compared as numbers.

use alloy_primitives::Address;
use serde_json::Value;

use super::encoding::parse_u128;
use super::requirements::PaymentRequirements;
use super::voucher_view::{AcceptedView, ExtraValue};

/// An offer with the forms `accepted` is compared against parsed once: build it once per
/// price, not per request.
#[derive(Clone, Debug)]
pub struct PreparedOffer {
    requirements: PaymentRequirements,
    /// `amount`, `asset` and `payTo` as values, when all three parse (always for an offer
    /// the engine built).
    parsed: Option<(u128, Address, Address)>,
}

impl PreparedOffer {
    /// Prepares `requirements`.
    pub fn new(requirements: PaymentRequirements) -> Self {
        let parsed = match (
            parse_u128(&requirements.amount),
            requirements.asset.parse::<Address>(),
            requirements.pay_to.parse::<Address>(),
        ) {
            (Some(amount), Ok(asset), Ok(pay_to)) => Some((amount, asset, pay_to)),
            _ => None,
        };
        Self {
            requirements,
            parsed,
        }
    }

    /// The offer as sent.
    pub fn requirements(&self) -> &PaymentRequirements {
        &self.requirements
    }

    /// [`accepted_matches`] for a borrowed `accepted`, with no string built: the same
    /// answer, or `false` when this offer's own fields do not parse (then ask
    /// [`accepted_matches`]).
    pub fn matches_view(&self, accepted: &AcceptedView<'_>) -> bool {
        let Some((amount, asset, pay_to)) = self.parsed else {
            return false;
        };
        let offer = &self.requirements;
        offer.scheme == accepted.scheme
            && offer.network == accepted.network
            && parse_u128(&accepted.amount) == Some(amount)
            && accepted.asset.parse::<Address>() == Ok(asset)
            && accepted.pay_to.parse::<Address>() == Ok(pay_to)
            && offer.max_timeout_seconds == accepted.max_timeout_seconds
            && offer.extra.iter().all(|(k, v)| {
                accepted.extra(k).is_some_and(|a| match a {
                    ExtraValue::Str(b) => match v {
                        Value::String(s) => same_string(s, b),
                        // A non-string is never equal to a string.
                        _ => false,
                    },
                    ExtraValue::Other(b) => json_is_subset(v, b),
                })
            })
    }
}

/// True when `accepted` (from the client) matches `offer` (ours).
pub fn accepted_matches(offer: &PaymentRequirements, accepted: &PaymentRequirements) -> bool {
    offer.scheme == accepted.scheme
        && offer.network == accepted.network
        && same_amount(&offer.amount, &accepted.amount)
        && same_address(&offer.asset, &accepted.asset)
        && same_address(&offer.pay_to, &accepted.pay_to)
        && offer.max_timeout_seconds == accepted.max_timeout_seconds
        && offer
            .extra
            .iter()
            .all(|(k, v)| accepted.extra.get(k).is_some_and(|a| json_is_subset(v, a)))
}

fn same_amount(a: &str, b: &str) -> bool {
    match (parse_u128(a), parse_u128(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn same_address(a: &str, b: &str) -> bool {
    match (a.parse::<Address>(), b.parse::<Address>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Recursive subset: every key of `small` is in `big` with a subset value;
/// arrays and scalars must be equal (strings holding addresses compare
/// case-insensitively).
pub fn json_is_subset(small: &Value, big: &Value) -> bool {
    match (small, big) {
        (Value::Object(s), Value::Object(b)) => s
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|bv| json_is_subset(v, bv))),
        (Value::String(s), Value::String(b)) => same_string(s, b),
        _ => small == big,
    }
}

/// Strings of `extra` are equal as text, or as addresses when ours is one.
fn same_string(ours: &str, theirs: &str) -> bool {
    ours == theirs || (ours.len() == 42 && same_address(ours, theirs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offer() -> PaymentRequirements {
        serde_json::from_value(json!({
            "scheme": "batch-settlement", "network": "eip155:31337", "amount": "1000",
            "asset": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
            "payTo": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "maxTimeoutSeconds": 300,
            "extra": {"receiverAuthorizer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
                      "withdrawDelay": 900, "name": "USDC", "version": "2"}
        }))
        .unwrap()
    }

    #[test]
    fn matches_an_exact_echo_and_added_keys_and_lowercased_addresses() {
        let o = offer();
        assert!(accepted_matches(&o, &o));
        let mut a = o.clone();
        a.extra.insert("clientNote".into(), json!({"x": 1}));
        a.pay_to = a.pay_to.to_lowercase();
        a.extra.insert(
            "receiverAuthorizer".into(),
            json!("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc"),
        );
        assert!(accepted_matches(&o, &a));
    }

    #[test]
    fn rejects_changed_core_fields_or_dropped_extra() {
        let o = offer();
        type Mutation = Box<dyn Fn(&mut PaymentRequirements)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|a| a.scheme = "exact".into()),
            Box::new(|a| a.network = "eip155:1".into()),
            Box::new(|a| a.amount = "999".into()),
            Box::new(|a| a.amount = "1000.0".into()),
            Box::new(|a| a.asset = "0x0000000000000000000000000000000000000001".into()),
            Box::new(|a| a.pay_to = "0x0000000000000000000000000000000000000001".into()),
            Box::new(|a| a.max_timeout_seconds = 60),
            Box::new(|a| {
                a.extra.remove("withdrawDelay");
            }),
            Box::new(|a| {
                a.extra.insert("withdrawDelay".into(), json!(901));
            }),
            Box::new(|a| {
                a.extra.insert("name".into(), json!("USD Coin"));
            }),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut a = o.clone();
            mutate(&mut a);
            assert!(!accepted_matches(&o, &a), "case {i} should not match");
        }
    }
}
