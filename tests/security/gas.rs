//! Issue 10, part 2: the relayer's gas is spent only where a transaction is due.
//!
//! - `deposits`: concurrent duplicates of one deposit header, and replays of a used ERC-3009
//!   authorization, cost no transaction (single flight per channel and per authorization).
//! - `refunds`: a refund request is honoured once; partial refunds have a minimum and a
//!   per-channel rate.
//! - `claims`: a stale watcher read never rolls claim state back, and no claim row is sent
//!   for a channel already claimed on chain.
//!
//! Each refusal is checked for its status, reason, unchanged state, and (on anvil) an
//! unchanged relayer nonce. The anvil rig is the test kit's `AnvilFixture` (the engine fixture
//! over the real escrow client).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::anvil_fixture::AnvilFixture;
use x402_upto_testkit::fixture as support;

mod claims;
mod deposits;
mod refunds;

/// Tokens minted to the payer.
pub(crate) const MINTED: u128 = 10_000_000;

/// The engine fixture over the escrow on anvil, the payer holding [`MINTED`].
pub(crate) async fn anvil() -> AnvilFixture {
    AnvilFixture::start(MINTED).await
}
