//! The demo's server: our engine behind the axum [`PaymentLayer`], on 127.0.0.1, with a
//! durable sled store (`group` mode) in a temporary directory, the chain access that submits
//! gasless deposits and refunds, and the settlement scheduler the demo drives by hand.

use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use axum::extract::Query;
use axum::routing::get;
use axum::{Extension, Router};
use rand::Rng;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{DemoError, step};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::engine::{ChainAccess, Engine, EngineConfig};
use x402_upto::ledger::Ledger;
use x402_upto::server::{Charge, PaymentLayer};
use x402_upto::settlement::{ClaimJournal, Settlement, SettlementConfig};
use x402_upto::store::{Durability, SledOptions, SledStore};
use x402_upto::wire::Eip155Network;
use x402_upto_testkit::devnet::{Devnet, TOKEN_NAME, TOKEN_VERSION};

/// Largest page the crawler route serves; a page's charge is proportional to its size.
pub const MAX_PAGE: usize = 16 * 1024;

/// A running demo server.
#[derive(Debug)]
pub struct DemoServer {
    /// Origin, e.g. `http://127.0.0.1:41234`.
    pub origin: String,
    /// The engine (its ledger is what the summary reconciles against).
    pub engine: Engine<SledStore>,
    /// Claims, sweeps and refunds (driven by the demo, not on a timer).
    pub settlement: Settlement,
    /// Chain access shared with the settlement.
    pub escrow: Arc<EscrowClient>,
    /// The durable store.
    pub store: Arc<SledStore>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

#[derive(Deserialize)]
struct Page {
    /// Which page (only makes the URL look like a crawl).
    #[serde(default)]
    #[allow(dead_code)]
    n: u64,
}

/// A crawled page: a random size up to [`MAX_PAGE`], charged `size / MAX_PAGE` of the price
/// (the "upto" part: the voucher covers the largest page, the payer pays for this one).
fn page(max: u128) -> (u128, String) {
    let size = rand::rng().random_range(64..=MAX_PAGE);
    let charge = max * size as u128 / MAX_PAGE as u128;
    (charge, "x".repeat(size))
}

impl DemoServer {
    /// Starts the server: `/crawl` costs up to `price` per page, `/free` serves the same
    /// pages unpaid (the latency baseline), `/gpu` streams metered jobs.
    pub async fn start(
        net: &Devnet,
        relayer: PrivateKeySigner,
        authorizer: PrivateKeySigner,
        pay_to: alloy_primitives::Address,
        price: u128,
        batch_size: usize,
    ) -> Result<Self, DemoError> {
        let dir = tempfile::tempdir().map_err(step("temp dir"))?;
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
                .map_err(step("open store"))?,
        );
        let domain = net.domain();
        let escrow = Arc::new(EscrowClient::new(
            net.provider.clone(),
            net.escrow,
            net.collector,
            Arc::new(net.tx_sender(relayer)),
            Some(authorizer.clone()),
            domain.clone(),
        ));
        let config = EngineConfig {
            network: Eip155Network(net.chain_id),
            pay_to,
            asset: net.token,
            asset_name: TOKEN_NAME.into(),
            asset_version: TOKEN_VERSION.into(),
            receiver_authorizer: authorizer.address(),
            withdraw_delay: 900,
            max_timeout_seconds: 300,
            extra: Default::default(),
        };
        let ledger = Ledger::new(domain);
        let access: Arc<dyn ChainAccess> = escrow.clone();
        let engine = Engine::new(config, ledger.clone(), Arc::clone(&store), Some(access))
            .map_err(step("engine"))?;
        let journal = ClaimJournal::open(&store).map_err(step("claim journal"))?;
        let settlement = Settlement::new(
            ledger,
            escrow.clone(),
            journal,
            SettlementConfig {
                // anvil mines at once and never reorganises.
                confirmations: 0,
                batch_size: batch_size.max(1),
                ..SettlementConfig::default()
            },
        );

        let crawl = |Extension(charge): Extension<Charge>, Query(_): Query<Page>| async move {
            let (cost, body) = page(charge.max());
            charge.set(cost);
            body
        };
        let free = |Query(_): Query<Page>| async move { page(0).1 };
        let app = Router::new()
            .route(
                "/crawl",
                get(crawl).layer(
                    PaymentLayer::fixed(engine.clone(), price)
                        .with_description("x402-upto demo: one crawled page, priced by size")
                        .with_mime_type("text/plain"),
                ),
            )
            .route("/free", get(free))
            .route("/gpu", super::gpu::route(engine.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(step("bind"))?;
        let origin = format!(
            "http://{}",
            listener.local_addr().map_err(step("local addr"))?
        );
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "demo server stopped");
            }
        });
        Ok(Self {
            origin,
            engine,
            settlement,
            escrow,
            store,
            stop,
            task,
            _dir: dir,
        })
    }

    /// Stops accepting requests and waits for the server task.
    pub async fn shutdown(self) -> Engine<SledStore> {
        self.stop.cancel();
        let _ = self.task.await;
        self.engine
    }
}
