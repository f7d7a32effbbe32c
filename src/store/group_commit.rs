//! Group commit: one flusher thread runs flushes back to back; writers wait for the first
//! flush that *started* after their write.
//!
//! Writers take a ticket from a counter *after* their insert returned, then wake the flusher.
//! The flusher reads the counter, flushes, and publishes "durable up to that ticket". A write
//! with ticket `t` was in sled's buffers before the counter reached `t`, so any flush begun
//! after reading `>= t` covers it. While one flush runs, later writers pile up and share the
//! next one: batch size adapts to load with no timer (perf-limits §3, design c3).
//!
//! With a non-zero `linger`, the flusher that finds pending writes waits that long before
//! flushing, so one flush (and one wake-up of this thread, which the scheduler tends to put
//! on the writer's core) serves more writes. On the 2-core machine this raised group-commit
//! throughput with 64 committers from ~0.55 to ~0.74 of raw recovery (docs/benchmarks.md),
//! for at most `linger` of extra acknowledgement latency.
//!
//! Each waiter parks on its own oneshot, registered under a small mutex, and the flusher
//! completes exactly the waiters its flush covered: one wake-up per acknowledged write, not
//! one per waiter per flush. The wait is async and runtime-agnostic.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::store::{FlushError, StoreError, WriteTicket};

type Outcome = Result<(), Arc<FlushError>>;

/// State shared by writers and the flusher.
#[derive(Debug, Default)]
struct Shared {
    issued: AtomicU64,
    stop: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Set by the first failed flush; nothing after it is acknowledged.
    failed: Option<Arc<FlushError>>,
    /// The flusher has exited.
    stopped: bool,
    /// Writers waiting for a ticket above `durable`.
    waiters: Vec<(u64, oneshot::Sender<Outcome>)>,
}

/// Runs one flush (sled flush, then optionally `fdatasync`).
pub(crate) type FlushFn = Box<dyn FnMut() -> Result<(), FlushError> + Send>;

/// Handle to the flusher thread; stops and joins it on drop (after a last flush).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start(
        dir: &Path,
        linger: Duration,
        mut flush: FlushFn,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let for_thread = shared.clone();
        let thread = thread::Builder::new()
            .name("x402-store-flush".into())
            .spawn(move || flusher_loop(&for_thread, linger, &mut flush))
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Call after a write returned: issues its ticket and wakes the flusher.
    pub(crate) fn written(&self) -> WriteTicket {
        let ticket = self.shared.issued.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        WriteTicket(ticket)
    }

    /// Resolves once a flush covering `ticket` completed.
    pub(crate) async fn wait(&self, ticket: WriteTicket) -> Result<(), StoreError> {
        let rx = {
            let mut st = self.shared.state.lock();
            if st.durable >= ticket.0 {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(StoreError::FlushFailed(e.clone()));
            }
            if st.stopped {
                return Err(StoreError::FlusherStopped);
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.push((ticket.0, tx));
            rx
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::FlushFailed(e)),
            Err(_) => Err(StoreError::FlusherStopped),
        }
    }
}

fn flusher_loop(shared: &Shared, linger: Duration, flush: &mut FlushFn) {
    let mut durable = 0u64;
    loop {
        let mut target = shared.issued.load(Ordering::Acquire);
        if target != durable && !linger.is_zero() {
            thread::sleep(linger);
            target = shared.issued.load(Ordering::Acquire);
        }
        if target == durable {
            if shared.stop.load(Ordering::Acquire) {
                shared.state.lock().stopped = true;
                return;
            }
            // A write between the load and here leaves an unpark token: no lost wake-up.
            // The timeout only bounds how long a stop request can go unnoticed.
            thread::park_timeout(Duration::from_millis(50));
            continue;
        }
        match flush() {
            Ok(()) => {
                durable = target;
                let ready: Vec<_> = {
                    let mut st = shared.state.lock();
                    st.durable = target;
                    st.waiters
                        .extract_if(.., |(t, _)| *t <= target)
                        .map(|(_, tx)| tx)
                        .collect()
                };
                for tx in ready {
                    // The waiter may have gone away (request cancelled); nothing to do then.
                    let _ = tx.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; refusing further acknowledgements");
                let e = Arc::new(e);
                let waiters = {
                    let mut st = shared.state.lock();
                    st.failed = Some(e.clone());
                    st.stopped = true;
                    std::mem::take(&mut st.waiters)
                };
                for (_, tx) in waiters {
                    let _ = tx.send(Err(e.clone()));
                }
                return;
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Mutex;

    #[tokio::test]
    async fn a_waiter_returns_only_after_a_flush_that_started_after_its_write() {
        let flushes = Arc::new(Mutex::new(0u32));
        let counter = flushes.clone();
        let gc = GroupCommit::start(
            Path::new("test"),
            Duration::ZERO,
            Box::new(move || {
                *counter.lock().map_err(|_| sync_err())? += 1;
                Ok(())
            }),
        )
        .expect("start");
        let t1 = gc.written();
        gc.wait(t1).await.expect("durable");
        let after_first = *flushes.lock().expect("lock");
        assert!(after_first >= 1);
        let t2 = gc.written();
        gc.wait(t2).await.expect("durable");
        assert!(*flushes.lock().expect("lock") > after_first);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_every_pending_and_later_waiter() {
        let gc = GroupCommit::start(
            Path::new("test"),
            Duration::ZERO,
            Box::new(|| Err(sync_err())),
        )
        .expect("start");
        let t = gc.written();
        assert!(matches!(gc.wait(t).await, Err(StoreError::FlushFailed(_))));
        let t = gc.written();
        assert!(gc.wait(t).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_waiter_is_covered_by_a_flush_that_started_after_its_write() {
        let starts = Arc::new(AtomicU64::new(0));
        let completes = Arc::new(AtomicU64::new(0));
        let (s, c) = (starts.clone(), completes.clone());
        let gc = Arc::new(
            GroupCommit::start(
                Path::new("test"),
                Duration::from_micros(100),
                Box::new(move || {
                    s.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_micros(200));
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .expect("start"),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (gc, starts, completes) = (gc.clone(), starts.clone(), completes.clone());
            tasks.spawn(async move {
                for _ in 0..20 {
                    // Flushes that began before this load cannot cover the write below.
                    let started_before = starts.load(Ordering::SeqCst);
                    let ticket = gc.written();
                    gc.wait(ticket).await.expect("durable");
                    assert!(completes.load(Ordering::SeqCst) > started_before);
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("waiter");
        }
        assert!(gc.shared.state.lock().waiters.is_empty());
    }

    fn sync_err() -> FlushError {
        FlushError::Sync {
            path: PathBuf::from("x"),
            source: std::io::Error::other("boom"),
        }
    }
}
