//! Command line. Only the hidden `internal store-load` exists so far (used by
//! `tests/crash.rs`); `serve`, `claim` and friends arrive with the server modules.

use clap::{Parser, Subcommand};

use crate::load::StoreLoadArgs;

/// x402 batch-settlement engine.
#[derive(Debug, Parser)]
#[command(name = "x402-upto", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Test and maintenance tools; not a stable interface.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Commits signed vouchers through ledger + store and prints one line per durable ack.
    StoreLoad(StoreLoadArgs),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Internal(Internal::StoreLoad(args)) => crate::load::run_blocking(&args),
    }
}
