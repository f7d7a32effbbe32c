//! Test kit for x402-upto: what the tests, the benches and the demo share.
//!
//! | module | holds |
//! |---|---|
//! | [`anvil_fixture`] | the engine fixture on anvil: the real escrow client as chain access, ERC-3009 authorizations |
//! | [`devnet`] | a local anvil with the contracts deployed and funded accounts |
//! | [`fixture`] | an engine over a sled store in a temp dir and an in-memory chain double, an axum app with priced routes, payload builders |
//! | [`offchain`] | channels and vouchers without a chain: domain, payer keys, configs, snapshots, signed vouchers |
//! | [`postgres`] | a throwaway PostgreSQL server per test (`initdb` + `pg_ctl`, random port) |
//! | [`settlement_fixture`] | the settlement tests' rig on anvil: parties, escrow client, ledger, store; signed vouchers |
//! | [`interop`] | the anvil rig with contracts at the stock SDK's canonical addresses, our server on it, the node peers |
//!
//! Test code: it panics (unwrap, expect) on setup failures instead of threading errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod anvil_fixture;
pub mod devnet;
pub mod fixture;
pub mod interop;
pub mod offchain;
pub mod postgres;
pub mod settlement_fixture;

/// The repository's root (where `.tools/`, `contracts/`, `interop/` and `scripts/` are).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}
