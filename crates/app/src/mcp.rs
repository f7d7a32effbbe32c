//! `x402-upto mcp`: an example paid MCP server. Its tools are priced "up to" and paid over
//! `batch-settlement` channels (`x402_upto::mcp::PaidTools`), on the engine, store, claim
//! scheduler and watcher of a `serve` TOML; on stdio (an MCP client starts it; both x402 MCP
//! bindings) or on streamable HTTP (`POST /mcp`; the tool-result binding, see
//! `x402_upto::mcp::PaidToolHandler`).
//!
//! Tools: `word_count` (paid: `unit_price` per word of `text`, at most `max_price` a call),
//! `price_list` (free: what the paid tools cost).

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, schemars, tool, tool_handler, tool_router};
use x402_upto::mcp::{PaidTools, ToolPrice};
use x402_upto::server::Charge;

/// How the server is reached.
#[derive(Clone, Debug)]
pub enum Transport {
    /// JSON-RPC lines on stdin/stdout (logs go to stderr).
    Stdio,
    /// Streamable HTTP at `/mcp` on this address, answering these `Host` names.
    Http {
        /// Listen address.
        listen: String,
        /// `Host` values accepted (DNS-rebinding protection); localhost names by default.
        allowed_hosts: Vec<String>,
    },
}

/// The example's prices.
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    /// Atomic units charged per word counted.
    pub unit_price: u128,
    /// The most one `word_count` call may cost (the offer's `amount`).
    pub max_price: u128,
}

/// `word_count`'s argument.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[schemars(crate = "rmcp::schemars")]
pub struct CountRequest {
    /// The text whose words are counted.
    pub text: String,
}

/// The example tools.
#[derive(Clone, Debug)]
pub struct WordTools {
    prices: Prices,
    #[allow(dead_code)] // read by the `tool_handler` expansion
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl WordTools {
    /// The tools at `prices`.
    pub fn new(prices: Prices) -> Self {
        Self {
            prices,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Counts the words of `text`. Paid: a price per word, up to a maximum per call (x402 batch-settlement)."
    )]
    async fn word_count(
        &self,
        Extension(charge): Extension<Charge>,
        Parameters(CountRequest { text }): Parameters<CountRequest>,
    ) -> String {
        let words = text.split_whitespace().count();
        let cost = u128::try_from(words)
            .unwrap_or(u128::MAX)
            .saturating_mul(self.prices.unit_price);
        // "Up to": the call costs what it counted, never more than the signed maximum.
        charge.set(cost.min(charge.max()));
        words.to_string()
    }

    #[tool(description = "What the paid tools cost (free).")]
    async fn price_list(&self) -> String {
        serde_json::json!({
            "word_count": {
                "perWord": self.prices.unit_price.to_string(),
                "maxPerCall": self.prices.max_price.to_string(),
            }
        })
        .to_string()
    }
}

#[tool_handler]
impl ServerHandler for WordTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions("x402-upto example: word_count is paid over x402 batch-settlement channels; price_list is free.")
    }
}

/// The example tools with `word_count` priced, on `engine`.
pub fn paid_tools<S: x402_upto::store::Store + 'static>(
    engine: x402_upto::engine::Engine<S>,
    prices: Prices,
) -> PaidTools<WordTools, S> {
    PaidTools::new(WordTools::new(prices), engine).price(
        "word_count",
        ToolPrice::up_to(prices.max_price)
            .with_description("Counts words; charged per word")
            .with_mime_type("text/plain"),
    )
}

/// Runs the example server on `transport` until the peer hangs up (stdio) or Ctrl-C /
/// SIGTERM (HTTP); the settlement side of `cfg` runs alongside and stops after it.
pub async fn run(
    cfg: crate::serve::ServeConfig,
    relayer: alloy::signers::local::PrivateKeySigner,
    authorizer: alloy::signers::local::PrivateKeySigner,
    transport: Transport,
    prices: Prices,
) -> Result<(), String> {
    crate::serve::with_engine(cfg, relayer, authorizer, move |engine| async move {
        let tools = paid_tools(engine, prices);
        match transport {
            Transport::Stdio => {
                let running = tools
                    .serve(rmcp::transport::stdio())
                    .await
                    .map_err(|e| format!("mcp on stdio: {e}"))?;
                running
                    .waiting()
                    .await
                    .map_err(|e| format!("mcp on stdio: {e}"))?;
                Ok(())
            }
            Transport::Http {
                listen,
                allowed_hosts,
            } => serve_http(tools, &listen, allowed_hosts).await,
        }
    })
    .await
}

async fn serve_http<S: x402_upto::store::Store + 'static>(
    tools: PaidTools<WordTools, S>,
    listen: &str,
    allowed_hosts: Vec<String>,
) -> Result<(), String> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let mut config = StreamableHttpServerConfig::default();
    if !allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(allowed_hosts);
    }
    let stop = config.cancellation_token.clone();
    // rmcp's HTTP server takes a handler: the tool-result binding only (`PaidToolHandler`).
    let handler = tools.into_handler();
    let service = StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_or_else(|_| listen.to_owned(), |a| a.to_string());
    tracing::info!(listen = %local, "paid MCP tools on streamable HTTP at /mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            crate::serve::shutdown_signal().await;
            stop.cancel();
        })
        .await
        .map_err(|e| e.to_string())
}
