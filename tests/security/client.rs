//! Security gaps closed on the client side and around it (issue 10, parts 5 and 6):
//! deposits credited only after `[deposits] confirmations` (and never after a reorg dropped
//! them), stream renewals behind the freshness gate, the cheating-server list persisted in
//! the client's state dir, and the client's cold start from the chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as server;
use x402_upto_testkit::interop;

mod cheaters;
mod cold_start;
mod crash;
mod deposits;
mod renewal;
