//! `internal scale-server`: our server over a store of `N` seeded channels. It measures its
//! own start-up (open the sled store, [`Engine::restore`]) and the resident memory that
//! start-up added, prints them in its `READY {json}` line, then serves
//! [`PaymentLayer::fixed`] over a handler that charges [`world::CHARGE`] of
//! [`world::PRICE`], durable `group` mode (the default of `serve`), until SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use x402_upto::engine::Engine;
use x402_upto::server::{Charge, PaymentLayer};
use x402_upto::store::{Durability, SledOptions, SledStore};
use x402_upto::wire::PAYMENT_RESPONSE;

use super::world;

/// Arguments of `internal scale-server`.
#[derive(Clone, Debug, clap::Args)]
pub struct ScaleServerArgs {
    /// Store directory holding the seeded channels (`internal scale-seed`).
    #[arg(long)]
    pub dir: PathBuf,
    /// Store durability: `group` (the default of `serve`), `every` or `none`.
    #[arg(long, default_value = "group")]
    pub durability: Durability,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Command(format!("{what}: {e}"))
}

/// Runs `internal scale-server` until SIGTERM.
pub fn run_blocking(args: &ScaleServerArgs) -> crate::Result<()> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.workers {
        b.worker_threads(n.max(1));
    }
    b.enable_all()
        .build()
        .map_err(crate::Error::Runtime)?
        .block_on(serve(args))
}

async fn serve(args: &ScaleServerArgs) -> crate::Result<()> {
    // The baseline: runtime and binary loaded, no store, no channel.
    let rss_before = world::rss_bytes("self").unwrap_or(0);
    let ticks0 = crate::bench::cpu::proc_ticks("self").unwrap_or(0);
    let t0 = Instant::now();
    let store = Arc::new(
        SledStore::open(&args.dir, SledOptions::with_durability(args.durability))
            .map_err(|e| fail("store", e))?,
    );
    let open_seconds = t0.elapsed().as_secs_f64();
    let rss_open = world::rss_bytes("self").unwrap_or(0);
    let ledger = x402_upto::Ledger::new(world::domain());
    let engine = Engine::new(world::engine_config(), ledger.clone(), store, None)
        .map_err(|e| fail("engine", e))?;
    let channels = engine.restore().await.map_err(|e| fail("restore", e))?;
    let restore_seconds = t0.elapsed().as_secs_f64();
    // CPU time of the whole process (sled's threads included), in clock ticks of 1/100 s:
    // what the restart costs whatever else the machine is doing.
    let restore_cpu_seconds = crate::bench::cpu::proc_ticks("self")
        .unwrap_or(0)
        .saturating_sub(ticks0) as f64
        / 100.0;
    let rss_after = world::rss_bytes("self").unwrap_or(0);

    let paid = move |Extension(c): Extension<Charge>| async move {
        c.set(world::CHARGE);
        "ok"
    };
    let counter = Arc::new(AtomicU64::new(0));
    let stats = {
        let (counter, ledger) = (Arc::clone(&counter), ledger.clone());
        // Reads every record: call it after the measurements, not between them.
        move || async move {
            let records = ledger.records();
            let charged: u128 = records.iter().map(|r| r.charged).sum();
            Json(json!({
                "paidResponses": counter.load(Ordering::Relaxed),
                "chargedTotal": charged.to_string(),
                "channels": records.len(),
            }))
        }
    };
    let app = Router::new()
        .route(
            "/paid",
            get(paid).layer(PaymentLayer::fixed(engine, world::PRICE)),
        )
        .route("/admin/stats", get(stats))
        .layer(axum::middleware::from_fn(count_paid))
        .layer(Extension(counter));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| fail("bind", e))?;
    let addr = listener.local_addr().map_err(|e| fail("local addr", e))?;
    let url = format!("http://{addr}");
    println!(
        "READY {}",
        json!({"paid": format!("{url}/paid"), "stats": format!("{url}/admin/stats"),
               "channels": channels, "openSeconds": open_seconds,
               "restoreSeconds": restore_seconds, "restoreCpuSeconds": restore_cpu_seconds,
               "rssBefore": rss_before,
               "rssOpen": rss_open, "rssAfter": rss_after})
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::bench::servers::stopped())
        .await
        .map_err(|e| fail("serve", e))
}

/// Counts the paid answers (200 with a `PAYMENT-RESPONSE`), for the books check.
async fn count_paid(
    Extension(counter): Extension<Arc<AtomicU64>>,
    req: Request,
    next: Next,
) -> Response {
    let res = next.run(req).await;
    if res.status() == StatusCode::OK && res.headers().contains_key(PAYMENT_RESPONSE) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    res
}
