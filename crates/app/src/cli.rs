//! Command line: `serve` (paying reverse proxy), `get`/`pay` (fetch a URL, paying as needed),
//! `channel` (status, refund), `demo`, and the hidden `internal` tools used by tests.
//!
//! Keys come from the environment (`X402_PAYER_KEY`, `X402_RELAYER_KEY`,
//! `X402_RECEIVER_AUTHORIZER_KEY`) or flags; they are never printed.

use std::path::PathBuf;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::Address;
use clap::{Args, Parser, Subcommand};

use x402_upto::client::{ClientConfig, PayingClient};

use crate::harness::store_load::StoreLoadArgs;

/// x402 batch-settlement engine.
#[derive(Debug, Parser)]
#[command(name = "x402-upto", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Paying reverse proxy in front of an upstream (prices and addresses in a TOML file).
    Serve(ServeArgs),
    /// Fetches a URL, paying with a batch-settlement channel when the server asks (402).
    #[command(alias = "pay")]
    Get(GetArgs),
    /// Local channels: status, cooperative refund, timed withdrawal.
    #[command(subcommand)]
    Channel(ChannelCommand),
    /// Example paid MCP server: tools priced "up to" over batch-settlement channels, on the
    /// chain, store and settlement of a `serve` TOML; stdio, or streamable HTTP at `/mcp`.
    Mcp(McpArgs),
    /// Runs the whole money path on a local anvil chain and prints a reconciled summary.
    Demo(crate::demo::DemoArgs),
    /// Side-by-side load generator: paid req/s and latency of servers started by `scripts/bench.sh`.
    Bench(crate::bench::BenchArgs),
    /// How cost grows with the number of channels: memory, restart, paid req/s, claims (`scripts/scale.sh`).
    BenchScale(crate::bench::scale::ScaleArgs),
    /// Test and maintenance tools; not a stable interface.
    #[command(hide = true, subcommand)]
    Internal(Internal),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML file (see `docs/protocol.md`, "serve").
    #[arg(long, short)]
    config: PathBuf,
    /// Key that sends (and pays the gas of) every transaction: deposits, refunds, claims, sweeps.
    #[arg(long, env = "X402_RELAYER_KEY", hide_env_values = true)]
    relayer_key: String,
    /// Key that signs claims and refunds (`extra.receiverAuthorizer`).
    #[arg(long, env = "X402_RECEIVER_AUTHORIZER_KEY", hide_env_values = true)]
    authorizer_key: String,
}

#[derive(Debug, Args)]
struct McpArgs {
    /// The keys and the `serve` TOML: chain, contracts, asset, receiver, store, settlement
    /// (`listen`, `upstream` and `[[routes]]` are not used).
    #[command(flatten)]
    serve: ServeArgs,
    /// Serve streamable HTTP at `http://ADDR/mcp` instead of stdio.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// `Host` names the HTTP transport answers (default: localhost, 127.0.0.1, ::1).
    #[arg(long = "allowed-host", value_name = "HOST")]
    allowed_hosts: Vec<String>,
    /// `word_count`: atomic units per word.
    #[arg(long, default_value_t = 10)]
    unit_price: u128,
    /// `word_count`: the most one call may cost (the offer's amount).
    #[arg(long, default_value_t = 10_000)]
    max_price: u128,
}

#[derive(Debug, Args)]
struct PayerArgs {
    /// Payer key (owns the deposited tokens).
    #[arg(long, env = "X402_PAYER_KEY", hide_env_values = true)]
    key: String,
    /// One JSON file per channel here.
    #[arg(long, env = "X402_STATE_DIR", default_value = ".x402-upto/channels")]
    state_dir: PathBuf,
    /// Escrow contract (default: the canonical x402 address).
    #[arg(long)]
    escrow: Option<Address>,
    /// ERC-3009 deposit collector (default: the canonical x402 address).
    #[arg(long)]
    collector: Option<Address>,
    /// Deposit = multiplier × price (at least the offer's minDeposit).
    #[arg(long, default_value_t = 10)]
    deposit_multiplier: u128,
    /// Most this payer deposits per channel, atomic units.
    #[arg(long, default_value_t = 10_000_000)]
    spend_limit: u128,
}

impl PayerArgs {
    fn client(&self) -> crate::Result<PayingClient> {
        self.client_with(None)
    }

    /// With `rpc`, channels with no local state are read from the chain (cold start).
    fn client_with(&self, rpc: Option<&str>) -> crate::Result<PayingClient> {
        let key = parse_key(&self.key, "payer")?;
        let mut cfg = ClientConfig::new(key).with_state_dir(&self.state_dir);
        cfg.rpc = rpc.map(str::to_owned);
        cfg.escrow = self.escrow.unwrap_or(cfg.escrow);
        cfg.collector = self.collector.unwrap_or(cfg.collector);
        cfg.deposit_multiplier = self.deposit_multiplier;
        cfg.spend_limit = self.spend_limit;
        Ok(PayingClient::new(cfg))
    }
}

#[derive(Debug, Args)]
struct GetArgs {
    /// URL to fetch.
    url: String,
    /// JSON-RPC endpoint of the server's chain: a channel with no local state (new machine,
    /// lost state dir) is then read from the escrow and paid from its `totalClaimed`.
    #[arg(long, env = "X402_RPC_URL")]
    rpc: Option<String>,
    #[command(flatten)]
    payer: PayerArgs,
}

#[derive(Debug, Subcommand)]
enum ChannelCommand {
    /// Prints every local channel as JSON.
    Status(PayerArgs),
    /// Asks the server of URL for a cooperative refund of the unspent deposit.
    Refund {
        /// A paid URL of the server holding the channel.
        url: String,
        /// Partial refund amount (default: everything unspent).
        #[arg(long)]
        amount: Option<u128>,
        /// JSON-RPC endpoint: a channel with no local state is read from the chain first.
        #[arg(long, env = "X402_RPC_URL")]
        rpc: Option<String>,
        #[command(flatten)]
        payer: PayerArgs,
    },
    /// The payer's own exit: start a timed withdrawal of the unspent balance, or finalize it.
    Withdraw {
        /// Channel id (see `channel status`).
        channel: alloy_primitives::B256,
        /// JSON-RPC endpoint (the payer pays the gas).
        #[arg(long, env = "X402_RPC_URL")]
        rpc: String,
        /// Finalize a withdrawal whose delay has passed.
        #[arg(long)]
        finalize: bool,
        #[command(flatten)]
        payer: PayerArgs,
    },
}

fn parse_key(s: &str, what: &str) -> crate::Result<PrivateKeySigner> {
    s.trim()
        .parse()
        .map_err(|_| crate::Error::Command(format!("the {what} key is not a 32-byte hex key")))
}

fn runtime() -> crate::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().map_err(crate::Error::Runtime)
}

fn command_error(e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Command(e.to_string())
}

fn serve(args: &ServeArgs) -> crate::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| command_error(format!("{}: {e}", args.config.display())))?;
    let mut cfg = crate::serve::ServeConfig::from_toml(&text)
        .map_err(|e| command_error(format!("{}: {e}", args.config.display())))?;
    // SIGHUP reads it again (routes, prices, limits).
    cfg.source = Some(args.config.clone());
    let relayer = parse_key(&args.relayer_key, "relayer")?;
    let authorizer = parse_key(&args.authorizer_key, "receiver authorizer")?;
    runtime()?
        .block_on(crate::serve::serve(cfg, relayer, authorizer))
        .map_err(command_error)
}

fn mcp(args: &McpArgs) -> crate::Result<()> {
    let text = std::fs::read_to_string(&args.serve.config)
        .map_err(|e| command_error(format!("{}: {e}", args.serve.config.display())))?;
    let cfg = crate::serve::ServeConfig::from_toml(&text)
        .map_err(|e| command_error(format!("{}: {e}", args.serve.config.display())))?;
    let relayer = parse_key(&args.serve.relayer_key, "relayer")?;
    let authorizer = parse_key(&args.serve.authorizer_key, "receiver authorizer")?;
    let transport = match &args.listen {
        None => crate::mcp::Transport::Stdio,
        Some(listen) => crate::mcp::Transport::Http {
            listen: listen.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
        },
    };
    let prices = crate::mcp::Prices {
        unit_price: args.unit_price,
        max_price: args.max_price,
    };
    runtime()?
        .block_on(crate::mcp::run(cfg, relayer, authorizer, transport, prices))
        .map_err(command_error)
}

fn get(args: &GetArgs) -> crate::Result<()> {
    use std::io::Write as _;
    let client = args.payer.client_with(args.rpc.as_deref())?;
    let answer = runtime()?
        .block_on(client.get(&args.url))
        .map_err(command_error)?;
    let summary = serde_json::json!({
        "status": answer.status.as_u16(),
        "payment": answer.settle,
    });
    eprintln!("{summary}");
    std::io::stdout()
        .write_all(&answer.body)
        .map_err(|e| command_error(format!("stdout: {e}")))?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(command_error(format!("HTTP {}", answer.status)))
    }
}

fn channel(cmd: &ChannelCommand) -> crate::Result<()> {
    match cmd {
        ChannelCommand::Status(payer) => {
            let channels = payer.client()?.channels();
            let json = serde_json::to_string_pretty(&channels).map_err(command_error)?;
            println!("{json}");
            Ok(())
        }
        ChannelCommand::Refund {
            url,
            amount,
            rpc,
            payer,
        } => {
            let client = payer.client_with(rpc.as_deref())?;
            let settled = runtime()?
                .block_on(client.refund(url, *amount))
                .map_err(command_error)?;
            println!(
                "{}",
                serde_json::to_string(&settled).map_err(command_error)?
            );
            Ok(())
        }
        ChannelCommand::Withdraw {
            channel,
            rpc,
            finalize,
            payer,
        } => {
            let client = payer.client()?;
            let tx = runtime()?
                .block_on(client.withdraw(rpc, (*channel).into(), *finalize))
                .map_err(command_error)?;
            println!("{tx}");
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Commits signed vouchers through ledger + store and prints one line per durable ack.
    StoreLoad(StoreLoadArgs),
    /// Ledger + store + claim scheduler against an RPC/escrow; prints one line per ack.
    SettleLoad(Box<crate::harness::settle_load::SettleLoadArgs>),
    /// Our server for `bench`: PaymentLayer over a fixed-charge handler, durable sled store.
    BenchServer(Box<crate::bench::servers::BenchServerArgs>),
    /// The ceiling for `bench`: decode the payment header, one secp256k1 recovery.
    BenchCeiling(crate::bench::servers::BenchCeilingArgs),
    /// Writes N idle channels into a fresh sled store for `bench-scale`.
    ScaleSeed(crate::bench::scale::seed::ScaleSeedArgs),
    /// Our server over a seeded store for `bench-scale`; reports restore time and memory.
    ScaleServer(crate::bench::scale::server::ScaleServerArgs),
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
        Command::Serve(args) => serve(&args),
        Command::Mcp(args) => mcp(&args),
        Command::Get(args) => get(&args),
        Command::Channel(cmd) => channel(&cmd),
        Command::Bench(args) => crate::bench::run_blocking(&args),
        Command::BenchScale(args) => crate::bench::scale::run_blocking(&args),
        Command::Internal(Internal::ScaleSeed(args)) => {
            crate::bench::scale::seed::run_blocking(&args)
        }
        Command::Internal(Internal::ScaleServer(args)) => {
            crate::bench::scale::server::run_blocking(&args)
        }
        Command::Internal(Internal::BenchServer(args)) => {
            crate::bench::servers::run_server_blocking(&args)
        }
        Command::Internal(Internal::BenchCeiling(args)) => {
            crate::bench::servers::run_ceiling_blocking(&args)
        }
        Command::Internal(Internal::StoreLoad(args)) => {
            crate::harness::store_load::run_blocking(&args)
        }
        Command::Internal(Internal::SettleLoad(args)) => {
            crate::harness::settle_load::run_blocking(&args)
        }
    }
}
