//! `internal scale-seed`: writes `N` idle channels ([`super::world::seeded_record`]) into a
//! fresh sled store through the [`Store`] trait, then flushes it. No chain and no HTTP: the
//! memory, restart and req/s rows do not need a million on-chain channels, only a store
//! that holds them (`docs/benchmarks.md` says so next to the table).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use x402_upto::clock::unix_now;
use x402_upto::store::{Durability, SledOptions, SledStore, Store};

use super::world;

/// Arguments of `internal scale-seed`.
#[derive(Clone, Debug, clap::Args)]
pub struct ScaleSeedArgs {
    /// Store directory (must not hold a store yet).
    #[arg(long)]
    pub dir: PathBuf,
    /// Channels to write.
    #[arg(long)]
    pub channels: u64,
}

fn fail(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::Command(format!("{what}: {e}"))
}

/// Seeds the store and prints `SEEDED {json}`.
pub fn run_blocking(args: &ScaleSeedArgs) -> crate::Result<()> {
    if args.dir.join("db").exists() {
        return Err(fail("--dir", "already holds a store"));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(crate::Error::Runtime)?;
    rt.block_on(seed(args))
}

async fn seed(args: &ScaleSeedArgs) -> crate::Result<()> {
    let t0 = Instant::now();
    // `none`: the seed is flushed once at the end; durability per record is not the point.
    let store = Arc::new(
        SledStore::open(&args.dir, SledOptions::with_durability(Durability::None))
            .map_err(|e| fail("store", e))?,
    );
    let domain = world::domain();
    let now = unix_now();
    let workers = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (store, domain, n) = (Arc::clone(&store), domain.clone(), args.channels);
        tasks.spawn(async move {
            let mut i = w;
            while i < n {
                let record = world::seeded_record(i, &domain, now);
                store.compare_and_set(None, &record).await?;
                i += workers;
            }
            Ok::<(), x402_upto::store::StoreError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| fail("seed task", e))?
            .map_err(|e| fail("seed write", e))?;
    }
    store.flush_now().map_err(|e| fail("flush", e))?;
    drop(store);
    println!(
        "SEEDED {}",
        json!({"channels": args.channels, "seconds": t0.elapsed().as_secs_f64(),
               "bytes": world::dir_bytes(&args.dir)})
    );
    Ok(())
}
