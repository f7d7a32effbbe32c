//! CAIP-2 network ids for EVM chains: `eip155:<decimal chain id>`.

use std::fmt;
use std::str::FromStr;

/// An EVM network as x402 names it, e.g. `eip155:8453` for Base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Eip155Network(pub u64);

impl Eip155Network {
    /// The numeric chain id.
    pub const fn chain_id(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Eip155Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "eip155:{}", self.0)
    }
}

impl FromStr for Eip155Network {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let id = s.strip_prefix("eip155:").ok_or(())?;
        // Canonical decimal only, so one chain has exactly one spelling and
        // `accepted.network` can be compared as a string.
        if id.is_empty()
            || (id.len() > 1 && id.starts_with('0'))
            || !id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(());
        }
        id.parse().map(Eip155Network).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_ids() {
        let n: Eip155Network = "eip155:8453".parse().unwrap();
        assert_eq!(n.chain_id(), 8453);
        assert_eq!(n.to_string(), "eip155:8453");
    }

    #[test]
    fn rejects_other_namespaces_and_non_canonical_numbers() {
        for bad in [
            "solana:5eykt4",
            "eip155:",
            "eip155:08453",
            "eip155:-1",
            "eip155:1e3",
            "8453",
            "eip155:99999999999999999999",
        ] {
            assert!(bad.parse::<Eip155Network>().is_err(), "{bad}");
        }
    }
}
