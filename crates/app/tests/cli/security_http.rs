//! Hostile HTTP against `serve`'s proxy (issue 10, parts 1, 3, 4 and 6.1): path tricks that
//! would reach a priced resource unpaid, malformed upstream charges, clients that hang up,
//! duplicate payment headers, reflected `Host`, slow and idle connections, and the receipt of
//! a deposit whose upstream failed. Requests go over real TCP with raw bytes, because an HTTP
//! client library would normalise the very targets under test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use x402_upto_testkit::fixture as support;

mod connections;
mod paths;
mod payments;
mod rig;
