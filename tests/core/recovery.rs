//! Differential test: our strict fast path (libsecp256k1 through alloy) against k256 0.13
//! used directly, on random keys and messages.

use alloy_primitives::{Address, B256, Signature, U256};
use k256::ecdsa::{RecoveryId, Signature as KSignature, SigningKey, VerifyingKey};
use proptest::prelude::*;
use x402_upto::verify::{SECP256K1_N, SignatureFault, recover_signer};

fn k256_address(vk: &VerifyingKey) -> Address {
    let point = vk.to_encoded_point(false);
    Address::from_raw_public_key(&point.as_bytes()[1..])
}

fn k256_recover(digest: &[u8; 32], raw: &[u8; 65]) -> Option<Address> {
    let sig = KSignature::from_slice(&raw[..64]).ok()?;
    let recid = RecoveryId::from_byte(raw[64].checked_sub(27)?)?;
    VerifyingKey::recover_from_prehash(digest, &sig, recid)
        .ok()
        .map(|vk| k256_address(&vk))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fast_recovery_agrees_with_k256_and_refuses_every_high_s_twin(
        secret in any::<[u8; 32]>(),
        digest in any::<[u8; 32]>(),
    ) {
        let Ok(key) = SigningKey::from_slice(&secret) else {
            // Zero or ≥ n: not a key. Astronomically rare with random bytes.
            return Ok(());
        };
        let expected = k256_address(key.verifying_key());
        let (sig, recid) = key.sign_prehash_recoverable(&digest).expect("valid key signs");
        let mut raw = [0u8; 65];
        raw[..64].copy_from_slice(&sig.to_bytes());
        raw[64] = 27 + recid.to_byte();

        let ours = recover_signer(&B256::from(digest), &raw);
        prop_assert_eq!(ours, Ok(expected));
        prop_assert_eq!(k256_recover(&digest, &raw), Some(expected));

        // The malleable twin (n - s, flipped parity) is the same signature mathematically.
        let s = U256::from_be_slice(&raw[32..64]);
        let mut twin = raw;
        twin[32..64].copy_from_slice(&(SECP256K1_N - s).to_be_bytes::<32>());
        twin[64] = 27 + (recid.to_byte() ^ 1);
        prop_assert_eq!(recover_signer(&B256::from(digest), &twin), Err(SignatureFault::HighS));
        // alloy's own parser normalises it and would accept: why our check exists.
        let normalised = Signature::from_raw_array(&twin).expect("parses");
        prop_assert_eq!(normalised.recover_address_from_prehash(&B256::from(digest)).ok(), Some(expected));
    }

    #[test]
    fn arbitrary_bytes_never_recover_to_an_address_k256_disagrees_with(
        rs in any::<[u8; 64]>(),
        v in prop_oneof![Just(27u8), Just(28u8), any::<u8>()],
        digest in any::<[u8; 32]>(),
    ) {
        let mut raw = [0u8; 65];
        raw[..64].copy_from_slice(&rs);
        raw[64] = v;
        if let Ok(address) = recover_signer(&B256::from(digest), &raw) {
            let mut canonical = raw;
            canonical[64] = if v == 0 || v == 27 { 27 } else { 28 };
            prop_assert_eq!(k256_recover(&digest, &canonical), Some(address));
        }
    }
}
