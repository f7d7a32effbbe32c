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
    /// Runs the whole money path on a local anvil chain and prints a reconciled summary.
    Demo(crate::demo::DemoArgs),
    /// Test and maintenance tools; not a stable interface.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Commits signed vouchers through ledger + store and prints one line per durable ack.
    StoreLoad(StoreLoadArgs),
    /// Ledger + store + claim scheduler against an RPC/escrow; prints one line per ack.
    SettleLoad(Box<crate::settlement::load::SettleLoadArgs>),
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> crate::Result<()> {
    match cli.command {
        Command::Demo(args) => {
            let rt = tokio::runtime::Runtime::new().map_err(crate::Error::Runtime)?;
            rt.block_on(async {
                tokio::time::timeout(crate::demo::DEMO_TIMEOUT, crate::demo::run(&args))
                    .await
                    .map_err(|_| crate::demo::DemoError::timed_out())?
            })?;
            Ok(())
        }
        Command::Internal(Internal::StoreLoad(args)) => crate::load::run_blocking(&args),
        Command::Internal(Internal::SettleLoad(args)) => {
            crate::settlement::load::run_blocking(&args)
        }
    }
}
