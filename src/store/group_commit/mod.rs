//! Group commit on a store thread: request tasks hand their writes to one thread, which makes
//! everything queued durable in one step (with the write-ahead log: one synchronous write of
//! the log, `wal.rs`; without it: one sled batch, a flush and an `fdatasync`), then completes
//! exactly the writers that step covered.
//!
//! Why a thread and not a flush-only helper: sled's copy-on-write inserts churn memory, and
//! doing them on the request thread between two signature recoveries evicted
//! libsecp256k1's tables and made the recovery itself slower (docs/benchmarks.md). Here the
//! request side only checks the version map and enqueues; all sled work happens on this
//! thread, batched. A write's ticket is taken when it is queued, in queue order, and a flush
//! covers every ticket up to the last one of its batch.
//!
//! With a non-zero `linger`, the thread that finds writes queued may wait up to that long
//! before taking the batch, so one sled batch, one flush and one wake-up serve more writes.
//! The wait is adaptive: it ends as soon as every writer seen recently is waiting for this
//! flush (nobody else is coming: a closed loop of C clients flushes when all C have
//! written, not when a timer fires), or when no write arrived for a [`GATHER_GAP`]; it
//! lasts the whole `linger` only while writes keep arriving. Each waiter parks on its own
//! oneshot, so a flush wakes exactly the writers it covered. The wait is async and
//! runtime-agnostic. The thread itself is in `store_thread.rs`; it reports every batch
//! (`x402_store_*` in `crate::telemetry`): how much of a paid request's latency is the store.
//!
//! A batch has two steps ([`BatchWriter`]): `persist` makes it durable, and its writers are
//! acknowledged as soon as that returns; `apply` then makes it visible to reads (sled's tree,
//! when the batch went to the write-ahead log first). Reads wait for `apply`
//! ([`GroupCommit::wait_applied`]), acknowledgements do not. Applying is lazy: every
//! [`APPLY_EVERY`] (or after [`APPLY_AFTER`] writes, or at once for a waiting reader or at
//! stop), in slices between batches while writes keep coming, so the writer can keep only
//! the last write per key (a channel paid 300 times in a round costs one sled insert).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::store::{FlushError, StoreError, WriteTicket};

mod store_thread;
use store_thread::store_loop;

type Outcome = Result<(), Arc<FlushError>>;

/// While gathering a batch, a pause this long with no new write ends the wait.
pub(crate) const GATHER_GAP: Duration = Duration::from_micros(50);

/// Acknowledged writes wait at most this long to be applied (unless a reader asks sooner).
pub(crate) const APPLY_EVERY: Duration = Duration::from_millis(20);

/// ... or until this many acknowledged writes wait.
pub(crate) const APPLY_AFTER: u64 = 4096;

/// While writes are queued, at most this many applied per turn (at least twice the last
/// batch, so applying keeps up), so a slow apply does not hold back acknowledgements.
const APPLY_SLICE: usize = 64;

/// How long the most writers seen waiting at once counts as "everyone" (then it decays to
/// what the next period saw, so a load that shrinks is followed within two periods).
const PEAK_PERIOD: Duration = Duration::from_millis(250);

/// What the store thread does with a batch of queued writes.
pub(crate) trait BatchWriter<T>: Send {
    /// Makes the batch durable; its writers are acknowledged once this returns `Ok`.
    fn persist(&mut self, batch: &mut Vec<T>) -> Result<(), FlushError>;

    /// Makes persisted writes visible to reads, at most `max` of them (keys, for a writer
    /// that keeps the last write per key); returns whether none is left. Runs after the
    /// acknowledgements.
    fn apply(&mut self, max: usize) -> Result<bool, FlushError> {
        let _ = max;
        Ok(true)
    }

    /// Whether the persisted writes must be applied now, whatever the schedule (the log is
    /// due for a checkpoint).
    fn must_apply(&self) -> bool {
        false
    }
}

/// A closure persists and applies in one step (sled batch, flush, `fdatasync`).
impl<T, F> BatchWriter<T> for F
where
    F: FnMut(Vec<T>) -> Result<(), FlushError> + Send,
{
    fn persist(&mut self, batch: &mut Vec<T>) -> Result<(), FlushError> {
        self(std::mem::take(batch))
    }
}

/// State shared by writers and the store thread.
#[derive(Debug)]
struct Shared<T> {
    stop: AtomicBool,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    /// Last ticket handed out; tickets are queue positions.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// Every ticket up to this one is visible to reads (≤ `durable`).
    applied: u64,
    /// Set by the first failed batch; nothing after it is acknowledged.
    failed: Option<Arc<FlushError>>,
    /// The store thread has exited.
    stopped: bool,
    /// Writes not yet taken by the store thread, in ticket order.
    queue: Vec<T>,
    /// Writers waiting for a ticket above `durable`.
    waiters: Vec<(u64, oneshot::Sender<Outcome>)>,
    /// Readers waiting for a ticket above `applied`.
    readers: Vec<(u64, oneshot::Sender<Outcome>)>,
    /// Most writes outstanding at once (`issued - durable`) in this period and the last.
    peak: u64,
    last_peak: u64,
    /// The store thread is gathering a batch and wants a wake-up when the outstanding writes
    /// reach this many (0: no wake-up wanted).
    wake_at: u64,
}

/// Handle to the store thread; stops and joins it on drop, after it wrote the whole queue.
#[derive(Debug)]
pub(crate) struct GroupCommit<T> {
    shared: Arc<Shared<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> GroupCommit<T> {
    pub(crate) fn start(
        dir: &Path,
        linger: Duration,
        mut write: impl BatchWriter<T> + 'static,
    ) -> Result<Self, StoreError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                issued: 0,
                durable: 0,
                applied: 0,
                failed: None,
                stopped: false,
                queue: Vec::new(),
                waiters: Vec::new(),
                readers: Vec::new(),
                peak: 0,
                last_peak: 0,
                wake_at: 0,
            }),
        });
        let for_thread = shared.clone();
        let thread = thread::Builder::new()
            .name("x402-store".into())
            .spawn(move || store_loop(&for_thread, linger, &mut write))
            .map_err(|source| StoreError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a write; returns its ticket. Fails once the store thread failed or stopped.
    pub(crate) fn submit(&self, op: T) -> Result<WriteTicket, StoreError> {
        let (ticket, wake) = {
            let mut st = self.shared.state.lock();
            if let Some(e) = &st.failed {
                return Err(StoreError::FlushFailed(e.clone()));
            }
            if st.stopped {
                return Err(StoreError::FlusherStopped);
            }
            st.issued += 1;
            st.queue.push(op);
            let outstanding = st.issued - st.durable;
            st.peak = st.peak.max(outstanding);
            // Wake the store thread only when it has something new to do: the first write
            // of a batch, or the write that completes the batch it is gathering. Other
            // writes join the queue without a system call.
            let wake = st.queue.len() == 1 || (st.wake_at != 0 && outstanding >= st.wake_at);
            (st.issued, wake)
        };
        if wake && let Some(t) = &self.thread {
            t.thread().unpark();
        }
        Ok(WriteTicket(ticket))
    }

    /// The ticket of the last write queued so far.
    pub(crate) fn last_issued(&self) -> WriteTicket {
        WriteTicket(self.shared.state.lock().issued)
    }

    /// Resolves once a flush covering `ticket` completed.
    pub(crate) async fn wait(&self, ticket: WriteTicket) -> Result<(), StoreError> {
        self.wait_for(ticket, false).await
    }

    /// Resolves once the batch holding `ticket` is visible to reads.
    pub(crate) async fn wait_applied(&self, ticket: WriteTicket) -> Result<(), StoreError> {
        self.wait_for(ticket, true).await
    }

    async fn wait_for(&self, ticket: WriteTicket, applied: bool) -> Result<(), StoreError> {
        let rx = {
            let mut st = self.shared.state.lock();
            if (if applied { st.applied } else { st.durable }) >= ticket.0 {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(StoreError::FlushFailed(e.clone()));
            }
            if st.stopped {
                return Err(StoreError::FlusherStopped);
            }
            let (tx, rx) = oneshot::channel();
            if applied {
                st.readers.push((ticket.0, tx));
            } else {
                st.waiters.push((ticket.0, tx));
            }
            rx
        };
        // Writes are applied lazily: a reader has the store thread apply them now.
        if applied && let Some(t) = &self.thread {
            t.thread().unpark();
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::FlushFailed(e)),
            Err(_) => Err(StoreError::FlusherStopped),
        }
    }
}

impl<T> Drop for GroupCommit<T> {
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
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    type Recording = (
        GroupCommit<u64>,
        Arc<Mutex<HashSet<u64>>>,
        Arc<Mutex<Vec<usize>>>,
    );

    /// A store thread whose "flush" records each batch as durable after a short sleep.
    fn recording(linger: Duration) -> Recording {
        let durable = Arc::new(Mutex::new(HashSet::new()));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let (d, b) = (durable.clone(), batches.clone());
        let gc = GroupCommit::start(Path::new("test"), linger, move |batch: Vec<u64>| {
            std::thread::sleep(Duration::from_micros(200));
            b.lock().push(batch.len());
            d.lock().extend(batch);
            Ok(())
        })
        .expect("start");
        (gc, durable, batches)
    }

    #[tokio::test]
    async fn a_write_is_acknowledged_only_once_its_batch_was_written_and_flushed() {
        let (gc, durable, _) = recording(Duration::ZERO);
        for value in 0..5 {
            let ticket = gc.submit(value).expect("queued");
            gc.wait(ticket).await.expect("durable");
            assert!(durable.lock().contains(&value));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_writer_is_acknowledged_after_its_own_write_only() {
        let (gc, durable, batches) = recording(Duration::from_micros(100));
        let gc = Arc::new(gc);
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..64u64 {
            let (gc, durable) = (gc.clone(), durable.clone());
            tasks.spawn(async move {
                for k in 0..20u64 {
                    let value = task * 1_000 + k;
                    let ticket = gc.submit(value).expect("queued");
                    gc.wait(ticket).await.expect("durable");
                    assert!(
                        durable.lock().contains(&value),
                        "acknowledged before written"
                    );
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("writer");
        }
        assert_eq!(durable.lock().len(), 64 * 20);
        assert_eq!(batches.lock().iter().sum::<usize>(), 64 * 20);
        assert!(gc.shared.state.lock().waiters.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_that_all_wait_are_flushed_without_waiting_out_the_linger() {
        // A linger no test could sit through: every batch below must end by the adaptive
        // rules (everyone seen is waiting, or nothing new arrived), never by the timer.
        let (gc, durable, batches) = recording(Duration::from_secs(3600));
        let gc = Arc::new(gc);
        let run = async {
            for writers in [1u64, 4] {
                let mut tasks = tokio::task::JoinSet::new();
                for w in 0..writers {
                    let (gc, durable) = (gc.clone(), durable.clone());
                    tasks.spawn(async move {
                        for k in 0..50u64 {
                            let value = writers * 1_000_000 + w * 1_000 + k;
                            let ticket = gc.submit(value).expect("queued");
                            gc.wait(ticket).await.expect("durable");
                            assert!(durable.lock().contains(&value));
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("writer");
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("a batch waited for the linger");
        assert_eq!(batches.lock().iter().sum::<usize>(), 50 + 4 * 50);
    }

    /// A writer that persists into a list and applies from it, counting its apply calls.
    #[derive(Default)]
    struct Lazy {
        persisted: Vec<u64>,
        applied: Arc<Mutex<Vec<u64>>>,
        applies: Arc<AtomicU64>,
    }

    impl BatchWriter<u64> for Lazy {
        fn persist(&mut self, batch: &mut Vec<u64>) -> Result<(), FlushError> {
            self.persisted.append(batch);
            Ok(())
        }

        fn apply(&mut self, max: usize) -> Result<bool, FlushError> {
            self.applies.fetch_add(1, Ordering::Relaxed);
            let n = max.min(self.persisted.len());
            self.applied.lock().extend(self.persisted.drain(..n));
            Ok(self.persisted.is_empty())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledged_writes_are_applied_on_a_schedule_and_at_once_for_a_reader() {
        let writer = Lazy::default();
        let (applied, applies) = (writer.applied.clone(), writer.applies.clone());
        let gc = GroupCommit::start(Path::new("test"), Duration::ZERO, writer).expect("start");
        let started = Instant::now();
        for value in 0..200 {
            let ticket = gc.submit(value).expect("queued");
            gc.wait(ticket).await.expect("durable");
        }
        // 200 batches of one write: applied once per APPLY_EVERY, not once per batch.
        let rounds = started.elapsed().as_micros() / APPLY_EVERY.as_micros() + 2;
        let calls = u128::from(applies.load(Ordering::Relaxed));
        assert!(calls <= rounds, "{calls} applies in {rounds} rounds");
        // A reader does not wait for the schedule.
        tokio::time::timeout(Duration::from_secs(10), gc.wait_applied(gc.last_issued()))
            .await
            .expect("a reader is served at once")
            .expect("applied");
        assert_eq!(*applied.lock(), (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn dropping_the_handle_writes_everything_still_queued() {
        let (gc, durable, _) = recording(Duration::from_millis(5));
        for value in 0..100 {
            gc.submit(value).expect("queued");
        }
        drop(gc);
        assert_eq!(durable.lock().len(), 100);
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_pending_and_later_writer() {
        let gc: GroupCommit<u64> =
            GroupCommit::start(Path::new("test"), Duration::ZERO, |_: Vec<u64>| {
                Err(sync_err())
            })
            .expect("start");
        let t = gc.submit(1).expect("queued");
        assert!(matches!(gc.wait(t).await, Err(StoreError::FlushFailed(_))));
        assert!(gc.submit(2).is_err());
    }

    fn sync_err() -> FlushError {
        FlushError::Sync {
            path: PathBuf::from("x"),
            source: std::io::Error::other("boom"),
        }
    }
}
