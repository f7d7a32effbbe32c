use std::process::ExitCode;

use clap::Parser;
use x402_upto_app::cli::{Cli, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `RUST_LOG` wins. Otherwise a server logs at `info` (deposits, claims, refunds are worth
    // a line each); one-shot commands stay quiet below `warn` so their output stays readable.
    let default = if matches!(std::env::args().nth(1).as_deref(), Some("serve" | "mcp")) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                msg.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
