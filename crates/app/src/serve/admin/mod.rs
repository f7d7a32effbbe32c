//! The operator's admin API and dashboard, on a listener of their own (`[admin]` in the
//! TOML; off without it). Every `/api/` request needs `Authorization: Bearer <token>`, the
//! token coming from an environment variable (never the TOML); `serve` refuses to start
//! with an `[admin]` table and no token. The dashboard (`/`) is one static page that polls
//! the API with the token the operator gives it (`docs/operations.md`, "Admin API and
//! dashboard"; `docs/security.md`).
//!
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`AdminKnobs`], the wiring ([`Prepared`], [`Hooks`]), the router |
//! | `auth.rs` | the bearer token: from the environment, compared in constant time |
//! | `api.rs` | the JSON endpoints: channels, totals, journal, activity, actions |
//! | `views.rs` | their JSON shapes |
//! | `history.rs` | the bounded rings of samples and transactions the dashboard draws |
//! | `blocked.rs` | the block list's file |
//! | `page.rs` | the dashboard: HTML, JS and CSS embedded in the binary |

mod api;
mod auth;
mod blocked;
mod history;
mod page;
mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use axum::Router;
use axum::routing::{get, post};
use parking_lot::RwLock;
use serde::Deserialize;
use x402_upto::Ledger;
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::settlement::{Observer, Settlement};
use x402_upto::store::SettlementStore;

pub use auth::{MIN_TOKEN_LEN, Token};
pub use blocked::BlockList;
pub use history::History;

/// Connections the admin listener holds open at once (more wait in the backlog).
pub const ADMIN_CONNECTIONS: usize = 64;

/// How often an instance re-reads a block list shared through PostgreSQL.
pub const BLOCK_LIST_REFRESH: Duration = Duration::from_secs(1);

/// `[admin]`: the admin API and dashboard.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminKnobs {
    /// Where the admin listener binds, e.g. `127.0.0.1:9470`. Keep it on loopback or a
    /// private network: it can refund channels and block payers.
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token (default `X402_ADMIN_TOKEN`).
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// The block list's file (default: next to the sled store, `<store>.blocked-payers.json`).
    /// Not with PostgreSQL: the list is then a table every instance shares.
    #[serde(default)]
    pub blocked_payers: Option<PathBuf>,
    /// Seconds between two samples of the dashboard's chart (default 10).
    #[serde(default = "default_sample_secs")]
    pub sample_secs: u64,
    /// Samples kept (default 360: an hour at 10 s). Memory is bounded by this.
    #[serde(default = "default_samples")]
    pub samples: usize,
    /// Decimals of the asset, for the dashboard's display only (default 6, as USDC); the
    /// API answers atomic units.
    #[serde(default = "default_decimals")]
    pub decimals: u8,
}

fn default_token_env() -> String {
    "X402_ADMIN_TOKEN".into()
}
fn default_sample_secs() -> u64 {
    10
}
fn default_samples() -> usize {
    360
}
fn default_decimals() -> u8 {
    6
}

impl AdminKnobs {
    /// The values `serve` refuses to start with.
    pub fn validate(&self) -> Result<(), String> {
        if self.sample_secs == 0 {
            return Err("admin.sample_secs must be at least 1".into());
        }
        if !(1..=100_000).contains(&self.samples) {
            return Err("admin.samples must be in 1..=100000".into());
        }
        if self.token_env.is_empty() {
            return Err("admin.token_env must name an environment variable".into());
        }
        Ok(())
    }

    /// The block list: a file as configured or next to the sled store `sled`; with
    /// PostgreSQL (`sled` is `None`) the shared table, opened later.
    pub fn block_list(&self, sled: Option<&std::path::Path>) -> Result<BlockList, String> {
        let Some(store) = sled else {
            if self.blocked_payers.is_some() {
                return Err(
                    "admin.blocked_payers is for the sled store: with PostgreSQL the \
                            block list is the x402_blocked_payers table every instance shares"
                        .into(),
                );
            }
            return Ok(BlockList::in_table());
        };
        let path = match &self.blocked_payers {
            Some(p) => p.clone(),
            None => {
                let mut name = store
                    .file_name()
                    .map(|n| n.to_os_string())
                    .unwrap_or_else(|| "store".into());
                name.push(".blocked-payers.json");
                store.with_file_name(name)
            }
        };
        BlockList::open(path)
    }
}

/// The settler running in this process, if any (over a shared store only the lease holder
/// has one): where the actions go.
pub struct SettlerSlot<S: SettlementStore>(Arc<RwLock<Option<Arc<Settlement<S>>>>>);

impl<S: SettlementStore> Clone for SettlerSlot<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S: SettlementStore> std::fmt::Debug for SettlerSlot<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SettlerSlot")
            .field(&self.0.read().is_some())
            .finish()
    }
}

impl<S: SettlementStore> SettlerSlot<S> {
    fn new() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }

    fn get(&self) -> Option<Arc<Settlement<S>>> {
        self.0.read().clone()
    }
}

/// What the settler wiring gives the admin side: where the running scheduler is published,
/// and the observer that records its transactions.
pub struct Hooks<S: SettlementStore> {
    slot: SettlerSlot<S>,
    observer: Observer,
}

impl<S: SettlementStore> Clone for Hooks<S> {
    fn clone(&self) -> Self {
        Self {
            slot: self.slot.clone(),
            observer: self.observer.clone(),
        }
    }
}

impl<S: SettlementStore> std::fmt::Debug for Hooks<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("slot", &self.slot).finish()
    }
}

impl<S: SettlementStore> Hooks<S> {
    /// The observer to give the scheduler before it is spawned.
    pub fn observer(&self) -> Observer {
        self.observer.clone()
    }

    /// Publishes the running scheduler (`None`: stopped, e.g. the settler lease was lost).
    pub fn set_settler(&self, settlement: Option<Arc<Settlement<S>>>) {
        *self.slot.0.write() = settlement;
    }
}

/// The admin side before the engine exists: its listener bound, the token read, the block
/// list loaded. Made first so a missing token stops `serve` before anything else starts.
#[derive(Debug)]
pub struct Prepared {
    knobs: AdminKnobs,
    listener: tokio::net::TcpListener,
    token: Token,
    blocked: BlockList,
    history: Arc<History>,
}

impl Prepared {
    /// Reads the token from the environment (refusing to go on without it), loads the block
    /// list, binds the listener.
    pub async fn bind(knobs: &AdminKnobs, store: Option<&std::path::Path>) -> Result<Self, String> {
        knobs.validate()?;
        let token = Token::from_env(&knobs.token_env)?;
        let blocked = knobs.block_list(store)?;
        let listener = tokio::net::TcpListener::bind(knobs.listen)
            .await
            .map_err(|e| format!("admin listen {}: {e}", knobs.listen))?;
        Ok(Self {
            knobs: knobs.clone(),
            listener,
            token,
            blocked,
            history: Arc::new(History::new(knobs.samples)),
        })
    }

    /// With the PostgreSQL store: the block list is its table; reads it now.
    pub async fn use_store(
        &mut self,
        store: Arc<x402_upto::store::PostgresStore>,
    ) -> Result<(), String> {
        self.blocked.use_table(store).await
    }

    /// The set of blocked payers, for [`x402_upto::engine::Engine::set_blocked_payers`].
    pub fn blocked_payers(&self) -> x402_upto::engine::BlockedPayers {
        self.blocked.payers().clone()
    }

    /// The hooks for the settler wiring.
    pub fn hooks<S: SettlementStore>(&self) -> Hooks<S> {
        let history = Arc::clone(&self.history);
        Hooks {
            slot: SettlerSlot::new(),
            observer: Observer(Arc::new(move |event| {
                history.observe(event, x402_upto::clock::unix_now());
            })),
        }
    }

    /// Serves the API and the dashboard, and samples the chart, until the task is aborted.
    pub fn spawn<S: SettlementStore + 'static>(
        self,
        parts: Parts<S>,
    ) -> tokio::task::JoinHandle<()> {
        // The counters the dashboard shows come from the recorder: make sure there is one.
        let _ = crate::telemetry::prometheus_handle();
        let local = self
            .listener
            .local_addr()
            .map_or_else(|_| self.knobs.listen.to_string(), |a| a.to_string());
        tracing::info!(listen = %local, blocked_payers = %self.blocked.home(), "admin API and dashboard");
        let state = Arc::new(api::AdminState {
            ledger: parts.ledger,
            store: parts.store,
            escrow: parts.escrow,
            pay_to: parts.pay_to,
            asset: parts.asset,
            asset_name: parts.asset_name,
            shared: parts.shared,
            settler: parts.hooks.slot,
            blocked: self.blocked,
            history: Arc::clone(&self.history),
            sample_secs: self.knobs.sample_secs,
            decimals: self.knobs.decimals,
        });
        let sampler = {
            let state = Arc::clone(&state);
            let every = Duration::from_secs(self.knobs.sample_secs);
            async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    state.take_sample().await;
                }
            }
        };
        // A shared block list changes through any instance: read it again every second.
        let refresher = {
            let blocked = state.blocked.clone();
            async move {
                let mut tick = tokio::time::interval(BLOCK_LIST_REFRESH);
                loop {
                    tick.tick().await;
                    if let Err(e) = blocked.refresh().await {
                        tracing::warn!(error = %e, "block list not refreshed; keeping the last one");
                    }
                }
            }
        };
        let app = router(state, self.token);
        let listener = self.listener;
        tokio::spawn(async move {
            let sampler = tokio::spawn(sampler);
            let refresher = tokio::spawn(refresher);
            // The proxy's timeouts (slowloris, idle), and few connections: a handful of
            // operators, not the public.
            let limits = super::listener::ConnectionLimits {
                max_connections: ADMIN_CONNECTIONS,
                ..Default::default()
            };
            let served =
                super::listener::serve_connections(listener, app, limits, std::future::pending())
                    .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "admin listener failed");
            }
            sampler.abort();
            refresher.abort();
        })
    }
}

/// What the admin API reads and acts on.
#[derive(Debug)]
pub struct Parts<S: SettlementStore> {
    pub ledger: Ledger,
    pub store: Arc<S>,
    pub escrow: Arc<EscrowClient>,
    /// The receiver and token whose on-chain totals are the revenue.
    pub pay_to: Address,
    pub asset: Address,
    /// The asset's name, for the dashboard.
    pub asset_name: String,
    /// Several instances share the store (PostgreSQL).
    pub shared: bool,
    pub hooks: Hooks<S>,
}

/// The routes: the dashboard's files without a token (they hold no data), `/api/` behind it.
fn router<S: SettlementStore + 'static>(state: Arc<api::AdminState<S>>, token: Token) -> Router {
    let api = Router::new()
        .route("/channels", get(api::channels::<S>))
        .route("/totals", get(api::totals::<S>))
        .route("/journal", get(api::journal::<S>))
        .route("/activity", get(api::activity::<S>))
        .route("/payers/blocked", get(api::blocked_list::<S>))
        .route("/payers/{payer}/block", post(api::block::<S>))
        .route("/payers/{payer}/unblock", post(api::unblock::<S>))
        .route("/claim", post(api::claim::<S>))
        .route("/sweep", post(api::sweep::<S>))
        .route("/channels/{id}/refund", post(api::refund::<S>))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            token,
            auth::require_token,
        ))
        .with_state(state);
    Router::new()
        .route("/", get(page::html))
        .route("/dashboard.js", get(page::js))
        .route("/dashboard.css", get(page::css))
        .nest("/api", api)
        .layer(axum::middleware::from_fn(page::no_store))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(extra: &str) -> AdminKnobs {
        toml::from_str(&format!("listen = \"127.0.0.1:9470\"\n{extra}")).unwrap()
    }

    #[test]
    fn the_block_list_is_a_file_next_to_sled_and_the_table_with_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let list = knobs("").block_list(Some(&store)).unwrap();
        assert_eq!(
            list.home(),
            dir.path()
                .join("store.blocked-payers.json")
                .display()
                .to_string()
        );
        assert_eq!(
            knobs("").block_list(None).unwrap().home(),
            "postgres: x402_blocked_payers"
        );
        // A file named for a PostgreSQL store would be per instance: refused.
        assert!(
            knobs("blocked_payers = \"/tmp/x.json\"")
                .block_list(None)
                .is_err()
        );
    }

    #[test]
    fn defaults_and_refused_values() {
        let k = knobs("");
        assert_eq!(
            (k.token_env.as_str(), k.sample_secs, k.samples, k.decimals),
            ("X402_ADMIN_TOKEN", 10, 360, 6)
        );
        assert!(knobs("sample_secs = 0").validate().is_err());
        assert!(knobs("samples = 0").validate().is_err());
        assert!(toml::from_str::<AdminKnobs>("listen = \"127.0.0.1:1\"\ntoken = \"x\"").is_err());
    }
}
