//! How old a channel's on-chain mirror may be before the request path stops serving on it.
//!
//! A pure policy over the ledger: the watcher marks its successful polls here, the engine
//! asks [`Freshness::is_fresh`] before it reserves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::ledger::book::Ledger;
use crate::typed_data::ChannelId;

/// Whether a channel's mirror is recent enough to serve on: the newer of its own last
/// direct read (`onchain_synced_at`) and the watcher's last successful poll (which, when it
/// succeeds, has seen every escrow event of every known channel up to the head) must be at
/// most `max_age` old. During an RPC outage, channels keep being served until that age is
/// reached; then the request path should refuse with `rpc_read_failed`.
#[derive(Clone, Debug)]
pub struct Freshness {
    last_poll: Arc<AtomicU64>,
    max_age: Duration,
}

impl Freshness {
    /// A policy allowing mirrors up to `max_age` old.
    pub fn new(max_age: Duration) -> Self {
        Self {
            last_poll: Arc::new(AtomicU64::new(0)),
            max_age,
        }
    }

    /// Records a successful watcher poll at `now` (unix seconds).
    pub fn mark(&self, now: u64) {
        self.last_poll.fetch_max(now, Ordering::Relaxed);
    }

    /// The largest mirror age served on.
    pub const fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Unix seconds of the watcher's last successful poll (0: never).
    pub fn last_poll(&self) -> u64 {
        self.last_poll.load(Ordering::Relaxed)
    }

    /// Whether `id`'s mirror may be served on at `now`. Unknown channels are not fresh.
    pub fn is_fresh(&self, ledger: &Ledger, id: &ChannelId, now: u64) -> bool {
        ledger.record(id).is_some_and(|r| {
            let synced = r.onchain_synced_at.max(self.last_poll());
            now.saturating_sub(synced) <= self.max_age.as_secs()
        })
    }
}
