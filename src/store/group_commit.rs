//! Group commit: one flusher thread runs flushes back to back; writers wait for the first
//! flush that *started* after their write.
//!
//! Writers take a ticket from a counter *after* their insert returned, then wake the flusher.
//! The flusher reads the counter, flushes, and publishes "durable up to that ticket". A write
//! with ticket `t` was in sled's buffers before the counter reached `t`, so any flush begun
//! after reading `>= t` covers it. While one flush runs, later writers pile up and share the
//! next one: batch size adapts to load with no timer (perf-limits §3, design c3). Waiters are
//! woken through a `tokio::sync::watch`, so the wait is async and runtime-agnostic.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio::sync::watch;

use crate::store::{FlushError, StoreError, WriteTicket};

/// What the flusher has made durable so far.
#[derive(Clone, Debug, Default)]
struct Flushed {
    durable: u64,
    failed: Option<Arc<FlushError>>,
}

/// Runs one flush (sled flush, then optionally `fdatasync`).
pub(crate) type FlushFn = Box<dyn FnMut() -> Result<(), FlushError> + Send>;

/// Handle to the flusher thread; stops and joins it on drop (after a last flush).
#[derive(Debug)]
pub(crate) struct GroupCommit {
    issued: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    rx: watch::Receiver<Flushed>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub(crate) fn start(dir: &Path, mut flush: FlushFn) -> Result<Self, StoreError> {
        let issued = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(Flushed::default());
        let (issued2, stop2) = (issued.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("x402-store-flush".into())
            .spawn(move || flusher_loop(&issued2, &stop2, &tx, &mut flush))
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            issued,
            stop,
            rx,
            thread: Some(thread),
        })
    }

    /// Call after a write returned: issues its ticket and wakes the flusher.
    pub(crate) fn written(&self) -> WriteTicket {
        let ticket = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        WriteTicket(ticket)
    }

    /// Resolves once a flush covering `ticket` completed.
    pub(crate) async fn wait(&self, ticket: WriteTicket) -> Result<(), StoreError> {
        let mut rx = self.rx.clone();
        let state = rx
            .wait_for(|f| f.durable >= ticket.0 || f.failed.is_some())
            .await
            .map_err(|_| StoreError::FlusherStopped)?;
        match &state.failed {
            // A failure after our flush completed does not undo our durability.
            _ if state.durable >= ticket.0 => Ok(()),
            Some(e) => Err(StoreError::FlushFailed(e.clone())),
            None => Err(StoreError::FlusherStopped),
        }
    }
}

fn flusher_loop(
    issued: &AtomicU64,
    stop: &AtomicBool,
    tx: &watch::Sender<Flushed>,
    flush: &mut FlushFn,
) {
    let mut durable = 0u64;
    loop {
        let target = issued.load(Ordering::Acquire);
        if target == durable {
            if stop.load(Ordering::Acquire) {
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
                tx.send_modify(|f| f.durable = target);
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; refusing further acknowledgements");
                tx.send_modify(|f| f.failed = Some(Arc::new(e)));
                return;
            }
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
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
        let gc =
            GroupCommit::start(Path::new("test"), Box::new(|| Err(sync_err()))).expect("start");
        let t = gc.written();
        assert!(matches!(gc.wait(t).await, Err(StoreError::FlushFailed(_))));
        let t = gc.written();
        assert!(gc.wait(t).await.is_err());
    }

    fn sync_err() -> FlushError {
        FlushError::Sync {
            path: PathBuf::from("x"),
            source: std::io::Error::other("boom"),
        }
    }
}
