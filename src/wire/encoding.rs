//! How values are spelled on the wire: amounts as decimal strings of atomic
//! units (`"10000"` = 0.01 USDC), addresses EIP-55 checksummed.
//!
//! Parsing is strict: ASCII digits only, no sign, no whitespace, no exponent,
//! and overflow is an error rather than a wrap. A lenient parser here would be
//! an amount the client did not sign.

use alloy_primitives::U256;

/// Parses a decimal string into a `u128`, rejecting anything but digits.
pub fn parse_u128(s: &str) -> Option<u128> {
    if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a decimal string into a `U256`, rejecting anything but digits.
pub fn parse_u256(s: &str) -> Option<U256> {
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(s, 10).ok()
}

/// serde adapter: `u128` as a decimal string.
pub mod decimal_u128 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes the amount as a decimal string.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a strictly decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_u128(&s)
            .ok_or_else(|| D::Error::custom(format!("{s:?} is not a decimal uint128")))
    }

    /// The same for optional fields (absent or null means `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer, de::Error};

        /// Writes `Some` as a decimal string (callers skip `None`).
        pub fn serialize<S: Serializer>(v: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => s.collect_str(v),
                None => s.serialize_none(),
            }
        }

        /// Reads an optional strictly decimal string.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u128>, D::Error> {
            let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
            s.map(|s| {
                super::super::parse_u128(&s)
                    .ok_or_else(|| D::Error::custom(format!("{s:?} is not a decimal uint128")))
            })
            .transpose()
        }
    }
}

/// serde adapter: `U256` as a decimal string.
pub mod decimal_u256 {
    use alloy_primitives::U256;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Writes the value as a decimal string.
    pub fn serialize<S: Serializer>(v: &U256, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Reads a strictly decimal string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<U256, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_u256(&s)
            .ok_or_else(|| D::Error::custom(format!("{s:?} is not a decimal uint256")))
    }
}

/// serde `serialize_with` for addresses: EIP-55 checksummed, as viem and the
/// x402 SDKs print them (parsing accepts any case).
pub(crate) fn checksummed<S: serde::Serializer>(
    a: &alloy_primitives::Address,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(&a.to_checksum(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_decimals_up_to_u128_max() {
        assert_eq!(parse_u128("0"), Some(0));
        assert_eq!(parse_u128("10000"), Some(10_000));
        assert_eq!(parse_u128(&u128::MAX.to_string()), Some(u128::MAX));
    }

    #[test]
    fn rejects_signs_spaces_hex_exponents_and_overflow() {
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "0x10",
            "1e3",
            "1.0",
            "340282366920938463463374607431768211456",
        ] {
            assert_eq!(parse_u128(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn u256_parses_beyond_u128() {
        let big = "340282366920938463463374607431768211456";
        assert_eq!(parse_u256(big), Some(U256::from(u128::MAX) + U256::from(1)));
        assert_eq!(parse_u256("abc"), None);
    }
}
