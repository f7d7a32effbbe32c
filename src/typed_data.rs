//! EIP-712 typed data of the batch-settlement escrow, byte-compatible with the contract.
//!
//! Structs are inline Solidity (`sol!`), so their EIP-712 type strings are exactly the
//! contract's (tests pin all six typehashes). [`EscrowDomain`] caches the domain separator:
//! a voucher digest is then one 96-byte keccak (the struct hash) plus one 66-byte keccak,
//! about 1 µs, instead of re-hashing the domain on every request.
//!
//! `channelId` is the EIP-712 *signing hash* of the [`ChannelConfig`] under the escrow domain,
//! not `keccak(abi.encode(config))`: it is bound to chain id and escrow address.

use std::fmt;

use alloy::signers::{SignerSync, local::PrivateKeySigner};
use alloy_primitives::{Address, B256, Bytes, Signature, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct, SolValue, sol};
use serde::{Deserialize, Serialize};

sol! {
    /// Immutable channel parameters; their EIP-712 hash is the channel id.
    /// `ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)`
    #[derive(Debug, PartialEq, Eq, Hash, Default)]
    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    /// Payer-signed cumulative ceiling: `Voucher(bytes32 channelId,uint128 maxClaimableAmount)`.
    #[derive(Debug, PartialEq, Eq)]
    struct Voucher {
        bytes32 channelId;
        uint128 maxClaimableAmount;
    }

    /// Receiver-authorizer-signed refund: `Refund(bytes32 channelId,uint256 nonce,uint128 amount)`.
    #[derive(Debug, PartialEq, Eq)]
    struct Refund {
        bytes32 channelId;
        uint256 nonce;
        uint128 amount;
    }

    /// One row of a claim batch:
    /// `ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)`.
    #[derive(Debug, PartialEq, Eq)]
    struct ClaimEntry {
        bytes32 channelId;
        uint128 maxClaimableAmount;
        uint128 totalClaimed;
    }

    /// Receiver-authorizer-signed batch: `ClaimBatch(ClaimEntry[] claims)ClaimEntry(…)`.
    /// EIP-712 hashes the array as keccak of the concatenated entry struct hashes, which is
    /// what the contract does (`keccak256(abi.encodePacked(entryHashes))`); a test pins it.
    #[derive(Debug, PartialEq, Eq)]
    struct ClaimBatch {
        ClaimEntry[] claims;
    }

    /// ERC-3009 deposit authorization, signed under the *token's* domain:
    /// `ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)`.
    #[derive(Debug, PartialEq, Eq)]
    struct ReceiveWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// EIP-712 domain name of the escrow contract.
pub const DOMAIN_NAME: &str = "x402 Batch Settlement";
/// EIP-712 domain version of the escrow contract.
pub const DOMAIN_VERSION: &str = "1";

/// A channel id: the EIP-712 hash of its [`ChannelConfig`] under the escrow domain.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChannelId(pub B256);

impl ChannelId {
    /// The id as a 32-byte word.
    pub const fn as_b256(&self) -> &B256 {
        &self.0
    }
}

impl From<B256> for ChannelId {
    fn from(b: B256) -> Self {
        Self(b)
    }
}

impl From<ChannelId> for B256 {
    fn from(id: ChannelId) -> Self {
        id.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({})", self.0)
    }
}

/// The escrow's EIP-712 domain with its separator computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscrowDomain {
    chain_id: u64,
    escrow: Address,
    separator: B256,
}

impl EscrowDomain {
    /// `{name: "x402 Batch Settlement", version: "1", chainId, verifyingContract: escrow}`.
    pub fn new(chain_id: u64, escrow: Address) -> Self {
        let separator = escrow_eip712_domain(chain_id, escrow).separator();
        Self {
            chain_id,
            escrow,
            separator,
        }
    }

    /// Chain id bound into every digest.
    pub const fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The escrow contract address (`verifyingContract`).
    pub const fn escrow(&self) -> Address {
        self.escrow
    }

    /// The cached domain separator.
    pub const fn separator(&self) -> B256 {
        self.separator
    }

    /// The full alloy domain, for `SolStruct::eip712_signing_hash` and wallets.
    pub fn eip712_domain(&self) -> Eip712Domain {
        escrow_eip712_domain(self.chain_id, self.escrow)
    }

    /// `keccak256(0x1901 ‖ separator ‖ struct_hash)`.
    pub fn signing_hash(&self, struct_hash: &B256) -> B256 {
        let mut buf = [0u8; 66];
        buf[0] = 0x19;
        buf[1] = 0x01;
        buf[2..34].copy_from_slice(self.separator.as_slice());
        buf[34..66].copy_from_slice(struct_hash.as_slice());
        keccak256(buf)
    }

    /// The channel id of `config` on this escrow.
    pub fn channel_id(&self, config: &ChannelConfig) -> ChannelId {
        ChannelId(self.signing_hash(&config.eip712_hash_struct()))
    }

    /// Digest a payer signs for a voucher. Hand-rolled struct hash (fixed 96-byte buffer);
    /// a test checks it against alloy's generic encoder.
    pub fn voucher_digest(&self, channel_id: ChannelId, max_claimable: u128) -> B256 {
        self.signing_hash(&voucher_struct_hash(channel_id, max_claimable))
    }

    /// Digest the receiver authorizer signs for `refundWithSignature`.
    pub fn refund_digest(&self, channel_id: ChannelId, nonce: U256, amount: u128) -> B256 {
        let refund = Refund {
            channelId: channel_id.0,
            nonce,
            amount,
        };
        self.signing_hash(&refund.eip712_hash_struct())
    }

    /// Digest the receiver authorizer signs for `claimWithSignature`.
    pub fn claim_batch_digest(&self, entries: &[ClaimEntry]) -> B256 {
        let batch = ClaimBatch {
            claims: entries.to_vec(),
        };
        self.signing_hash(&batch.eip712_hash_struct())
    }
}

fn escrow_eip712_domain(chain_id: u64, escrow: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some(DOMAIN_NAME.into()),
        Some(DOMAIN_VERSION.into()),
        Some(U256::from(chain_id)),
        Some(escrow),
        None,
    )
}

/// `keccak256(VOUCHER_TYPEHASH ‖ channelId ‖ uint256(maxClaimableAmount))`.
fn voucher_struct_hash(channel_id: ChannelId, max_claimable: u128) -> B256 {
    let mut buf = [0u8; 96];
    buf[..32].copy_from_slice(Voucher::eip712_type_hash_const().as_slice());
    buf[32..64].copy_from_slice(channel_id.0.as_slice());
    buf[80..96].copy_from_slice(&max_claimable.to_be_bytes());
    keccak256(buf)
}

impl Voucher {
    /// The voucher typehash, computed once.
    fn eip712_type_hash_const() -> B256 {
        static HASH: std::sync::OnceLock<B256> = std::sync::OnceLock::new();
        *HASH.get_or_init(|| keccak256(Voucher::eip712_encode_type().as_bytes()))
    }
}

/// The EIP-712 domain of an ERC-3009 token (e.g. USDC `{name: "USD Coin", version: "2"}`).
pub fn token_domain(name: &str, version: &str, chain_id: u64, token: Address) -> Eip712Domain {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(token),
        None,
    )
}

/// The ERC-3009 nonce the deposit collector expects: `keccak256(abi.encode(channelId, salt))`.
pub fn erc3009_deposit_nonce(channel_id: ChannelId, salt: B256) -> B256 {
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(channel_id.0.as_slice());
    buf[32..].copy_from_slice(salt.as_slice());
    keccak256(buf)
}

/// `collectorData` for the ERC-3009 collector:
/// `abi.encode(uint256 validAfter, uint256 validBefore, uint256 salt, bytes signature)`.
pub fn erc3009_collector_data(
    valid_after: U256,
    valid_before: U256,
    salt: B256,
    signature: &[u8],
) -> Bytes {
    let salt = U256::from_be_bytes(salt.0);
    (
        valid_after,
        valid_before,
        salt,
        Bytes::copy_from_slice(signature),
    )
        .abi_encode_params()
        .into()
}

/// Signing failed (the local key signer only fails on invalid internal state).
pub type SigningError = alloy::signers::Error;

/// Signs an already-computed EIP-712 digest (RFC 6979, deterministic, low-s, v = 27/28).
pub fn sign_digest(signer: &PrivateKeySigner, digest: &B256) -> Result<Signature, SigningError> {
    signer.sign_hash_sync(digest)
}

/// Payer side: signs `Voucher{channelId, maxClaimableAmount}`.
pub fn sign_voucher(
    signer: &PrivateKeySigner,
    domain: &EscrowDomain,
    channel_id: ChannelId,
    max_claimable: u128,
) -> Result<Signature, SigningError> {
    sign_digest(signer, &domain.voucher_digest(channel_id, max_claimable))
}

/// Receiver-authorizer side: signs `Refund{channelId, nonce, amount}`.
pub fn sign_refund(
    signer: &PrivateKeySigner,
    domain: &EscrowDomain,
    channel_id: ChannelId,
    nonce: U256,
    amount: u128,
) -> Result<Signature, SigningError> {
    sign_digest(signer, &domain.refund_digest(channel_id, nonce, amount))
}

/// Receiver-authorizer side: signs `ClaimBatch{claims}`.
pub fn sign_claim_batch(
    signer: &PrivateKeySigner,
    domain: &EscrowDomain,
    entries: &[ClaimEntry],
) -> Result<Signature, SigningError> {
    sign_digest(signer, &domain.claim_batch_digest(entries))
}

/// Payer side: signs an ERC-3009 `ReceiveWithAuthorization` under the token's domain.
pub fn sign_receive_with_authorization(
    signer: &PrivateKeySigner,
    token_domain: &Eip712Domain,
    authorization: &ReceiveWithAuthorization,
) -> Result<Signature, SigningError> {
    sign_digest(signer, &authorization.eip712_signing_hash(token_domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{address, b256};

    fn domain() -> EscrowDomain {
        EscrowDomain::new(8453, address!("0x4020074e9dF2ce1deE5A9C1b5c3f541D02a10003"))
    }

    #[test]
    fn typehashes_match_the_escrow_contract() {
        let cases = [
            (
                ChannelConfig::eip712_type_hash(&ChannelConfig::default()),
                b256!("0x1c9a06ceab9b0ebbd3301dc56c9111bb6d9af421356dc9ccb3b7084c755db308"),
            ),
            (
                keccak256(Voucher::eip712_encode_type().as_bytes()),
                b256!("0x1e1bd6ff84c3e0d9029a292b212e039c0ca97ec497c55191a4a5874294609a69"),
            ),
            (
                keccak256(Refund::eip712_encode_type().as_bytes()),
                b256!("0xbe23ad087435072cd69b49cc5b92de10ee610fce7ae0ab428307972d764bb216"),
            ),
            (
                keccak256(ClaimEntry::eip712_encode_type().as_bytes()),
                b256!("0x30b9a0367528fca13c3e8ec6134c3113f1887ebe7a1ad61de0955aac288b0cf5"),
            ),
            (
                keccak256(ClaimBatch::eip712_encode_type().as_bytes()),
                b256!("0x42bd57c010b870c2e96203c66341f28a6a19b4d56a74533a8eb5f706b9fd6d57"),
            ),
            (
                keccak256(ReceiveWithAuthorization::eip712_encode_type().as_bytes()),
                b256!("0xd099cc98ef71107a616c4f0f941f04c322d8e254fe26b3c6668db87aae413de8"),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn claim_batch_type_string_lists_the_entry_type() {
        assert_eq!(
            ClaimBatch::eip712_encode_type(),
            "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
        );
    }

    #[test]
    fn cached_voucher_digest_equals_alloy_signing_hash() {
        let d = domain();
        let id = ChannelId(b256!(
            "0x00000000000000000000000000000000000000000000000000000000000000aa"
        ));
        for max in [0u128, 1, 5000, u128::MAX] {
            let v = Voucher {
                channelId: id.0,
                maxClaimableAmount: max,
            };
            assert_eq!(
                d.voucher_digest(id, max),
                v.eip712_signing_hash(&d.eip712_domain())
            );
        }
    }

    #[test]
    fn channel_id_is_the_typed_hash_not_the_abi_hash() {
        let d = domain();
        let config = ChannelConfig {
            payer: Address::repeat_byte(1),
            receiver: Address::repeat_byte(2),
            receiverAuthorizer: Address::repeat_byte(3),
            token: Address::repeat_byte(4),
            withdrawDelay: alloy_primitives::aliases::U40::from(900u64),
            ..Default::default()
        };
        let id = d.channel_id(&config);
        assert_eq!(id.0, config.eip712_signing_hash(&d.eip712_domain()));
        assert_ne!(id.0, keccak256(config.abi_encode()));
        assert_ne!(id, EscrowDomain::new(1, d.escrow()).channel_id(&config));
    }

    #[test]
    fn claim_batch_hashes_entries_as_packed_struct_hashes() {
        let d = domain();
        let entries: Vec<ClaimEntry> = (1u8..=3)
            .map(|i| ClaimEntry {
                channelId: B256::repeat_byte(i),
                maxClaimableAmount: u128::from(i) * 100,
                totalClaimed: u128::from(i) * 50,
            })
            .collect();
        let mut packed = Vec::new();
        for e in &entries {
            packed.extend_from_slice(e.eip712_hash_struct().as_slice());
        }
        let batch_typehash = keccak256(ClaimBatch::eip712_encode_type().as_bytes());
        let manual = keccak256([batch_typehash.as_slice(), keccak256(&packed).as_slice()].concat());
        assert_eq!(d.claim_batch_digest(&entries), d.signing_hash(&manual));

        let empty = keccak256([batch_typehash.as_slice(), keccak256([]).as_slice()].concat());
        assert_eq!(d.claim_batch_digest(&[]), d.signing_hash(&empty));
    }

    #[test]
    fn signed_voucher_recovers_to_the_signer() {
        let signer = PrivateKeySigner::random();
        let d = domain();
        let id = ChannelId(B256::repeat_byte(7));
        let sig = sign_voucher(&signer, &d, id, 42).expect("local signing");
        let recovered = sig.recover_address_from_prehash(&d.voucher_digest(id, 42));
        assert_eq!(recovered.ok(), Some(signer.address()));
        assert!(sig.as_bytes()[64] == 27 || sig.as_bytes()[64] == 28);
    }

    #[test]
    fn deposit_nonce_is_keccak_of_abi_encoded_id_and_salt() {
        let id = ChannelId(B256::repeat_byte(9));
        let salt = B256::repeat_byte(5);
        assert_eq!(
            erc3009_deposit_nonce(id, salt),
            keccak256((id.0, salt).abi_encode())
        );
    }

    #[test]
    fn collector_data_is_params_encoded() {
        let data =
            erc3009_collector_data(U256::ZERO, U256::from(7), B256::repeat_byte(1), &[0xab; 65]);
        // 4 head words (the bytes is an offset), then length word and 3 words of payload.
        assert_eq!(data.len(), 32 * 4 + 32 + 96);
        assert_eq!(data[32 * 3 + 31], 0x80);
    }
}
