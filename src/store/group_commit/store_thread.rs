//! The store thread: gathers queued writes into a batch (the adaptive linger), makes the
//! batch durable, acknowledges exactly the writers it covered, and applies acknowledged
//! writes lazily. Each batch records its size, its gather and what ended it, and its write
//! time (`x402_store_*` in `crate::telemetry`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{
    APPLY_AFTER, APPLY_EVERY, APPLY_SLICE, BatchWriter, GATHER_GAP, Outcome, PEAK_PERIOD, Shared,
};
use crate::store::FlushError;
use crate::telemetry;

/// What ended a batch's wait for more writes (the `until` label of
/// [`crate::telemetry::STORE_GATHERS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GatherEnd {
    /// Every writer seen recently was queued.
    Everyone,
    /// No new write for a [`GATHER_GAP`].
    Gap,
    /// The whole linger passed while writes kept arriving.
    Linger,
    /// The store is stopping.
    Stop,
}

impl GatherEnd {
    const fn label(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Gap => "gap",
            Self::Linger => "linger",
            Self::Stop => "stop",
        }
    }
}

/// Waits, at most `linger`, for more writes to join the queued ones: until every writer
/// seen recently is waiting, or a [`GATHER_GAP`] passes with no new write.
fn gather<T>(shared: &Shared<T>, linger: Duration) -> GatherEnd {
    let deadline = Instant::now() + linger;
    let (mut seen, mut last_arrival) = (0, Instant::now());
    loop {
        let now = Instant::now();
        {
            let mut st = shared.state.lock();
            // Everything outstanding is queued here: the previous flush completed.
            let queued = st.queue.len() as u64;
            let everyone = st.peak.max(st.last_peak);
            if queued != seen {
                (seen, last_arrival) = (queued, now);
            }
            let end = if queued >= everyone {
                Some(GatherEnd::Everyone)
            } else if shared.stop.load(Ordering::Acquire) {
                Some(GatherEnd::Stop)
            } else if now >= deadline {
                Some(GatherEnd::Linger)
            } else if now >= last_arrival + GATHER_GAP {
                Some(GatherEnd::Gap)
            } else {
                None
            };
            if let Some(end) = end {
                st.wake_at = 0;
                return end;
            }
            st.wake_at = everyone;
        }
        // A submit reaching `wake_at` unparks us early; an old unpark token only costs one
        // more look at the queue.
        thread::park_timeout((last_arrival + GATHER_GAP).min(deadline) - now);
    }
}

pub(super) fn store_loop<T>(shared: &Shared<T>, linger: Duration, write: &mut impl BatchWriter<T>) {
    let mut period = Instant::now();
    // The last time every acknowledged write was applied.
    let mut last_applied = Instant::now();
    let mut last_batch = 0;
    loop {
        let (queued, behind, reading) = {
            let st = shared.state.lock();
            (
                !st.queue.is_empty(),
                st.durable - st.applied,
                !st.readers.is_empty(),
            )
        };
        let stopping = shared.stop.load(Ordering::Acquire);
        let apply_due = behind > 0
            && (reading
                || stopping
                || behind >= APPLY_AFTER
                || last_applied.elapsed() >= APPLY_EVERY
                || write.must_apply());
        if apply_due {
            // Slices between batches while writers wait; everything when nobody does.
            let max = if queued {
                APPLY_SLICE.max(2 * last_batch)
            } else {
                usize::MAX
            };
            let target = shared.state.lock().durable;
            match write.apply(max) {
                Ok(true) => {
                    last_applied = Instant::now();
                    let ready = {
                        let mut st = shared.state.lock();
                        st.applied = target;
                        covered(&mut st.readers, target)
                    };
                    acknowledge(ready);
                }
                Ok(false) => {}
                Err(e) => return fail(shared, e),
            }
        }
        if !queued {
            if apply_due {
                continue;
            }
            if stopping {
                shared.state.lock().stopped = true;
                return;
            }
            // A submit between the check and here leaves an unpark token: no lost wake-up.
            // The timeout bounds how long a stop request goes unnoticed and how long
            // acknowledged writes wait to be applied.
            let wait = if behind > 0 {
                APPLY_EVERY.saturating_sub(last_applied.elapsed())
            } else {
                Duration::from_millis(50)
            };
            thread::park_timeout(wait);
            continue;
        }
        if !linger.is_zero() {
            let started = Instant::now();
            let end = gather(shared, linger);
            metrics::histogram!(telemetry::STORE_GATHER_SECONDS)
                .record(started.elapsed().as_secs_f64());
            metrics::counter!(telemetry::STORE_GATHERS, "until" => end.label()).increment(1);
        }
        let (mut batch, target) = {
            let mut st = shared.state.lock();
            (std::mem::take(&mut st.queue), st.issued)
        };
        last_batch = batch.len();
        metrics::histogram!(telemetry::STORE_BATCH_SIZE).record(batch.len() as f64);
        let started = Instant::now();
        if let Err(e) = write.persist(&mut batch) {
            return fail(shared, e);
        }
        metrics::histogram!(telemetry::STORE_WRITE_SECONDS).record(started.elapsed().as_secs_f64());
        let ready = {
            let mut st = shared.state.lock();
            st.durable = target;
            if period.elapsed() >= PEAK_PERIOD {
                period = Instant::now();
                st.last_peak = std::mem::take(&mut st.peak);
            }
            covered(&mut st.waiters, target)
        };
        acknowledge(ready);
    }
}

/// Takes out of `waiting` everyone whose ticket is at most `target`.
fn covered(
    waiting: &mut Vec<(u64, oneshot::Sender<Outcome>)>,
    target: u64,
) -> Vec<oneshot::Sender<Outcome>> {
    waiting
        .extract_if(.., |(t, _)| *t <= target)
        .map(|(_, tx)| tx)
        .collect()
}

/// Wakes `ready` with success, outside the state's lock.
fn acknowledge(ready: Vec<oneshot::Sender<Outcome>>) {
    for tx in ready {
        // The waiter may have gone away (request cancelled); nothing to do then.
        let _ = tx.send(Ok(()));
    }
}

/// A failed step: every pending and later writer and reader gets the error.
fn fail<T>(shared: &Shared<T>, e: FlushError) {
    tracing::error!(error = %e, "store write failed; refusing further acknowledgements");
    let e = Arc::new(e);
    let waiters = {
        let mut st = shared.state.lock();
        st.failed = Some(e.clone());
        st.stopped = true;
        let mut all = std::mem::take(&mut st.waiters);
        all.append(&mut st.readers);
        all
    };
    for (_, tx) in waiters {
        let _ = tx.send(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::group_commit::State;
    use parking_lot::Mutex;
    use std::sync::atomic::AtomicBool;

    /// Shared state as the store thread sees it while gathering: `queued` writes waiting,
    /// `peak` writers seen at once recently.
    fn gathering(queued: u64, peak: u64) -> Shared<u64> {
        Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State {
                issued: queued,
                durable: 0,
                applied: 0,
                failed: None,
                stopped: false,
                queue: (0..queued).collect(),
                waiters: Vec::new(),
                readers: Vec::new(),
                peak,
                last_peak: 0,
                wake_at: 0,
            }),
        }
    }

    #[test]
    fn a_gather_reports_what_ended_it() {
        // Every writer seen recently is queued: no wait at all.
        let started = Instant::now();
        assert_eq!(
            gather(&gathering(4, 4), Duration::from_secs(5)),
            GatherEnd::Everyone
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // Others were seen but none comes: the gap ends it, long before the linger would.
        let started = Instant::now();
        assert_eq!(
            gather(&gathering(1, 4), Duration::from_secs(5)),
            GatherEnd::Gap
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        // A linger shorter than the gap runs out first.
        let linger = GATHER_GAP / 5;
        assert_eq!(gather(&gathering(1, 4), linger), GatherEnd::Linger);
        // A stopping store writes what it has.
        let stopping = gathering(1, 4);
        stopping.stop.store(true, Ordering::Release);
        assert_eq!(gather(&stopping, Duration::from_secs(5)), GatherEnd::Stop);
    }
}
