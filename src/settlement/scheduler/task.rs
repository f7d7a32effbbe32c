//! The scheduler's task: start-up sync, then claim rounds, sweeps and idle refunds on ticks
//! and wake-ups, until stopped.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Settlement, SettlementEvent};
use crate::settlement::{refund_idle, sync_all};
use crate::store::{SettlementStore, SledStore};

impl<S: SettlementStore> Settlement<S> {
    /// Starts the scheduler task: reconcile the journal, re-read every channel (a
    /// withdrawal may have started while we were down), claim what is due at once, then
    /// loop on ticks and wake-ups.
    pub fn spawn(self) -> SettlementHandle<S> {
        let inner = Arc::new(self);
        let stop = CancellationToken::new();
        let task = {
            let inner = Arc::clone(&inner);
            let stop = stop.clone();
            tokio::spawn(async move { inner.run(stop).await })
        };
        SettlementHandle { inner, stop, task }
    }

    async fn run(&self, stop: CancellationToken) {
        let (synced, err) = sync_all(&self.ledger, &self.client).await;
        tracing::info!(synced, failed = err.is_some(), "settlement started");
        loop {
            let acting = self.acting.lock().await;
            let report = self.claim_round(false).await;
            if report.batches > 0 || report.failed_rows > 0 {
                tracing::info!(?report, "claim round");
            }
            if self.journal.store().is_shared() {
                crate::settlement::publish_mirrors(&**self.journal.store(), &self.ledger).await;
            }
            if !self.may_act() {
                drop(acting);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(self.config.tick) => {}
                }
                continue;
            }
            let settle_due =
                self.timers.lock().last_settle.elapsed() >= self.config.settle_interval;
            if settle_due && let Err(e) = self.settle_round().await {
                tracing::warn!(error = %e, "settle failed; retrying next interval");
            }
            if let Some(r) = &self.refunds {
                let due = self.timers.lock().last_refund.elapsed() >= r.every;
                if due {
                    let done = refund_idle(&self.ledger, &r.store, &self.client, &r.policy).await;
                    self.timers.lock().last_refund = Instant::now();
                    for refunded in done.iter().flatten() {
                        self.observe(SettlementEvent::Refunded(refunded.clone()));
                    }
                    if !done.is_empty() {
                        tracing::info!(
                            refunds = done.iter().filter(|d| d.is_ok()).count(),
                            failed = done.iter().filter(|d| d.is_err()).count(),
                            "idle-channel refunds"
                        );
                    }
                }
            }
            drop(acting);
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.tick) => {}
            }
        }
    }
}

/// A running scheduler.
#[derive(Debug)]
pub struct SettlementHandle<S: SettlementStore = SledStore> {
    inner: Arc<Settlement<S>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl<S: SettlementStore> SettlementHandle<S> {
    /// Makes the scheduler run a round now (e.g. the watcher or the HTTP layer saw a
    /// withdrawal being initiated).
    pub fn wake(&self) {
        self.inner.wake();
    }

    /// The `Notify` behind [`Self::wake`], for components that only need to wake it.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.wake)
    }

    /// The scheduler itself (forced rounds, journal inspection).
    pub fn settlement(&self) -> &Arc<Settlement<S>> {
        &self.inner
    }

    /// Stops the task after its current round.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
