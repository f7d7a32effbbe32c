//! The `x402-upto` binary's code, as a library so that its tests can drive it.
//!
//! | module | holds |
//! |---|---|
//! | [`cli`] | the command line: `serve`, `get`/`pay`, `channel`, `demo`, `bench`, hidden `internal` tools |
//! | [`serve`] | the paying reverse proxy: TOML, request targets, the listener with its limits, wiring |
//! | [`demo`] | `x402-upto demo`: crawler and GPU scenarios, claims, sweep, refunds, reconciled summary |
//! | [`bench`] | `x402-upto bench`: side-by-side load generator, and the bench/ceiling servers it measures |
//! | [`harness`] | processes the crash tests kill: store load, settlement load |
//! | [`mcp`] | `x402-upto mcp`: the example paid MCP server (stdio or streamable HTTP) |
//! | [`telemetry`] | the Prometheus exporter and the log subscriber |
//! | [`error`] | the application's [`Error`] |

pub mod bench;
pub mod cli;
pub mod demo;
pub mod error;
pub mod harness;
pub mod mcp;
pub mod serve;
pub mod telemetry;

pub use error::{Error, Result};
