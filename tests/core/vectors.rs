//! Cross-language vectors: `contracts/test/fixtures/vectors.json` is produced from the deployed
//! Solidity escrow; every digest, id and signature there must come out of our Rust the same.
//! RFC 6979 signing is deterministic on both sides, so re-signing reproduces the signatures.

use std::str::FromStr;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_sol_types::SolStruct;
use serde_json::Value;
use x402_upto::typed_data::{
    ChannelConfig, ChannelId, ClaimBatch, ClaimEntry, EscrowDomain, ReceiveWithAuthorization,
    Refund, Voucher, erc3009_deposit_nonce, sign_claim_batch, sign_refund, sign_voucher,
};
use x402_upto::verify::{SignedVoucher, recover_signer};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contracts/test/fixtures/vectors.json"
);

fn fixture() -> Value {
    let text = std::fs::read_to_string(FIXTURE)
        .expect("contracts/test/fixtures/vectors.json is committed");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("vectors.json has no `{path}`"))
    })
}

fn string(v: &Value, path: &str) -> String {
    match field(v, path) {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("`{path}` is not a string or number: {other}"),
    }
}

fn b256(v: &Value, path: &str) -> B256 {
    B256::from_str(&string(v, path)).unwrap_or_else(|e| panic!("`{path}`: {e}"))
}

fn address(v: &Value, path: &str) -> Address {
    Address::from_str(&string(v, path)).unwrap_or_else(|e| panic!("`{path}`: {e}"))
}

fn amount(v: &Value, path: &str) -> u128 {
    string(v, path)
        .parse()
        .unwrap_or_else(|e| panic!("`{path}`: {e}"))
}

fn bytes(v: &Value, path: &str) -> Bytes {
    Bytes::from_str(&string(v, path)).unwrap_or_else(|e| panic!("`{path}`: {e}"))
}

fn key(v: &Value, path: &str) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&b256(v, path)).unwrap_or_else(|e| panic!("`{path}`: {e}"))
}

struct Setup {
    v: Value,
    domain: EscrowDomain,
    config: ChannelConfig,
    channel_id: ChannelId,
}

fn setup() -> Setup {
    let v = fixture();
    let chain_id: u64 = string(&v, "chainId").parse().expect("chainId");
    let domain = EscrowDomain::new(chain_id, address(&v, "escrow"));
    let delay: u64 = string(&v, "channelConfig.withdrawDelay")
        .parse()
        .expect("withdrawDelay");
    let config = ChannelConfig {
        payer: address(&v, "channelConfig.payer"),
        payerAuthorizer: address(&v, "channelConfig.payerAuthorizer"),
        receiver: address(&v, "channelConfig.receiver"),
        receiverAuthorizer: address(&v, "channelConfig.receiverAuthorizer"),
        token: address(&v, "channelConfig.token"),
        withdrawDelay: U40::from(delay),
        salt: b256(&v, "channelConfig.salt"),
    };
    let channel_id = ChannelId(b256(&v, "channelId"));
    Setup {
        v,
        domain,
        config,
        channel_id,
    }
}

#[test]
fn domain_separator_and_typehashes_match_the_contract() {
    let s = setup();
    assert_eq!(s.domain.separator(), b256(&s.v, "domainSeparator"));
    let ours = [
        ("channelConfig", ChannelConfig::eip712_encode_type()),
        ("voucher", Voucher::eip712_encode_type()),
        ("refund", Refund::eip712_encode_type()),
        ("claimEntry", ClaimEntry::eip712_encode_type()),
        ("claimBatch", ClaimBatch::eip712_encode_type()),
        (
            "receiveWithAuthorization",
            ReceiveWithAuthorization::eip712_encode_type(),
        ),
    ];
    for (name, type_string) in ours {
        assert_eq!(
            keccak256(type_string.as_bytes()),
            b256(&s.v, &format!("typehashes.{name}")),
            "{name}"
        );
    }
}

#[test]
fn channel_id_is_the_contracts_typed_hash_of_the_config() {
    let s = setup();
    assert_eq!(s.domain.channel_id(&s.config), s.channel_id);
}

#[test]
fn voucher_digest_and_signature_are_reproduced() {
    let s = setup();
    let max = amount(&s.v, "voucher.maxClaimableAmount");
    let digest = s.domain.voucher_digest(s.channel_id, max);
    assert_eq!(digest, b256(&s.v, "voucher.digest"));

    let signer = key(&s.v, "voucher.signerPrivateKey");
    assert_eq!(signer.address(), address(&s.v, "voucher.signer"));
    assert_eq!(
        signer.address(),
        s.config.payerAuthorizer,
        "the voucher is signed by the payer authorizer"
    );
    let signature = bytes(&s.v, "voucher.signature");
    let ours = sign_voucher(&signer, &s.domain, s.channel_id, max).expect("sign");
    assert_eq!(Bytes::from(ours.as_bytes()), signature);

    assert_eq!(recover_signer(&digest, &signature), Ok(signer.address()));
    let voucher = SignedVoucher {
        channel_id: s.channel_id,
        max_claimable: max,
        signature,
    };
    assert!(
        voucher
            .verify_ecdsa(&s.domain, s.config.payerAuthorizer)
            .is_ok()
    );
}

#[test]
fn refund_digest_and_signature_are_reproduced() {
    let s = setup();
    let nonce = U256::from_str(&string(&s.v, "refund.nonce")).expect("nonce");
    let refund_amount = amount(&s.v, "refund.amount");
    assert_eq!(
        s.domain.refund_digest(s.channel_id, nonce, refund_amount),
        b256(&s.v, "refund.digest")
    );
    let authorizer = key(&s.v, "receiverAuthorizerPrivateKey");
    assert_eq!(authorizer.address(), s.config.receiverAuthorizer);
    let ours =
        sign_refund(&authorizer, &s.domain, s.channel_id, nonce, refund_amount).expect("sign");
    assert_eq!(
        Bytes::from(ours.as_bytes()),
        bytes(&s.v, "refund.signature")
    );
}

#[test]
fn claim_batch_digest_and_signature_are_reproduced() {
    let s = setup();
    let rows = field(&s.v, "claimBatch.entries")
        .as_array()
        .expect("entries is an array");
    assert!(!rows.is_empty());
    let entries: Vec<ClaimEntry> = rows
        .iter()
        .map(|row| ClaimEntry {
            channelId: b256(row, "channelId"),
            maxClaimableAmount: amount(row, "maxClaimableAmount"),
            totalClaimed: amount(row, "totalClaimed"),
        })
        .collect();
    assert_eq!(
        s.domain.claim_batch_digest(&entries),
        b256(&s.v, "claimBatch.digest")
    );
    let authorizer = key(&s.v, "receiverAuthorizerPrivateKey");
    let ours = sign_claim_batch(&authorizer, &s.domain, &entries).expect("sign");
    assert_eq!(
        Bytes::from(ours.as_bytes()),
        bytes(&s.v, "claimBatch.signature")
    );
}

#[test]
fn erc3009_deposit_nonce_binds_channel_and_salt() {
    let s = setup();
    let nonce = erc3009_deposit_nonce(s.channel_id, b256(&s.v, "erc3009.salt"));
    assert_eq!(nonce, b256(&s.v, "erc3009.nonce"));
}
