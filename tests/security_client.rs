//! Security gaps closed on the client side and around it (issue 10, parts 5 and 6):
//! deposits credited only after `[deposits] confirmations` (and never after a reorg dropped
//! them), stream renewals behind the freshness gate, the cheating-server list persisted in
//! the client's state dir, and the client's cold start from the chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as server;
use x402_upto_testkit::interop;

#[path = "security_client/cheaters.rs"]
mod cheaters;
#[path = "security_client/cold_start.rs"]
mod cold_start;
#[path = "security_client/crash.rs"]
mod crash;
#[path = "security_client/deposits.rs"]
mod deposits;
#[path = "security_client/renewal.rs"]
mod renewal;
