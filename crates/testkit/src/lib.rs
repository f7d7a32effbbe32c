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

/// A local TCP port for a server that a test starts in another process, which binds it by number.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999 by default), and
/// never twice in one process: a port asked of the kernel (`bind` to port 0) and released can
/// be given at once to another test's `bind(0)` listener or to an outgoing connection, and the
/// server then fails to start, or the test talks to someone else's server. Each process starts
/// at its own offset, so concurrent test binaries rarely meet; a port in use is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 32_768 - LOW;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free local port in {LOW}..{}", LOW + SPAN);
}

/// The repository's root (where `.tools/`, `contracts/`, `interop/` and `scripts/` are).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}
