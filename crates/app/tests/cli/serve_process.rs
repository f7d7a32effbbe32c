//! `x402-upto serve` as a child process on anvil: its config on a free port, the process
//! with the relayer and receiver-authorizer keys, the wait until it answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use x402_upto_testkit::interop::Chain;

pub const BIN: &str = env!("CARGO_BIN_EXE_x402-upto");

/// A key as the binary reads it from the environment.
pub fn hex_key(k: &PrivateKeySigner) -> String {
    format!("0x{}", hex::encode(k.to_bytes()))
}

/// Writes `dir/serve.toml` for `chain`: a free local port, `upstream` proxied, the store in
/// `dir/store`, `extra` TOML appended. Its path and the port.
pub fn write_config(chain: &Chain, dir: &Path, upstream: &str, extra: &str) -> (PathBuf, u16) {
    let port = free_port();
    let config = dir.join("serve.toml");
    let toml = chain.serve_toml(
        &format!("127.0.0.1:{port}"),
        upstream,
        &dir.join("store").display().to_string(),
    );
    std::fs::write(&config, toml + extra).unwrap();
    (config, port)
}

/// `x402-upto serve --config config` with the relayer (anvil:1) and receiver-authorizer
/// (anvil:2) keys; killed on drop.
pub fn spawn(chain: &Chain, config: &Path) -> tokio::process::Child {
    command(chain, config).spawn().unwrap()
}

/// The command [`spawn`] runs, for callers that add environment or pipes.
pub fn command(chain: &Chain, config: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.args(["serve", "--config"])
        .arg(config)
        .env("X402_RELAYER_KEY", hex_key(&chain.net.key(1).unwrap()))
        .env(
            "X402_RECEIVER_AUTHORIZER_KEY",
            hex_key(&chain.net.key(2).unwrap()),
        )
        .kill_on_drop(true);
    c
}

pub use x402_upto_testkit::free_port;

/// Polls `url` every 50 ms, `tries` times at most, until any HTTP answer comes back: whether
/// the server came up.
pub async fn answers(url: &str, tries: usize) -> bool {
    for _ in 0..tries {
        if reqwest::get(url).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
