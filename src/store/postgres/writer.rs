//! Group commit on PostgreSQL: the writes of every task of this instance go through one
//! queue; the writer takes whatever is queued (up to a batch limit) and commits it as one
//! transaction whose statements are pipelined on one connection, so one WAL flush covers
//! the batch. There is no timer: while a batch commits, the next one gathers, so a lone
//! write waits for exactly one commit and a busy instance commits in large batches.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::link::{Link, unavailable};
use crate::store::StoreError;
use crate::typed_data::ChannelId;

/// How long a batch may take before the connection is presumed stuck and the batch is
/// answered "unavailable" (its outcome unknown: the writers reload before writing again).
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One queued write.
pub(super) struct WriteOp {
    pub id: ChannelId,
    pub kind: WriteKind,
    pub reply: oneshot::Sender<Result<(), StoreError>>,
}

pub(super) enum WriteKind {
    /// Compare-and-set of a record's bytes from `expected` to `version`.
    Put {
        expected: Option<u64>,
        version: u64,
        bytes: Vec<u8>,
        keep_hold: bool,
    },
    /// Delete iff the stored version is `expected`.
    Remove { expected: u64 },
}

/// What the writer needs besides its queue.
pub(super) struct Writer {
    pub link: Link,
    pub instance: String,
    pub hold_ms: i64,
    pub max_batch: usize,
}

impl Writer {
    /// Runs until every sender is gone.
    pub(super) async fn run(self, mut queue: mpsc::Receiver<WriteOp>) {
        let mut next: Vec<WriteOp> = Vec::new();
        while let Some(mut batch) =
            next_batch(&mut queue, &mut next, self.max_batch, |op| op.id).await
        {
            metrics::histogram!(crate::telemetry::STORE_BATCH_SIZE).record(batch.len() as f64);
            let started = std::time::Instant::now();
            self.commit(&mut batch).await;
            metrics::histogram!(crate::telemetry::STORE_WRITE_SECONDS)
                .record(started.elapsed().as_secs_f64());
        }
    }

    /// Commits one batch and answers every writer in it.
    async fn commit(&self, batch: &mut Vec<WriteOp>) {
        let outcome = match tokio::time::timeout(BATCH_TIMEOUT, self.execute(batch)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.link.reset();
                Err(StoreError::Unavailable(
                    "a commit timed out; its outcome is unknown".into(),
                ))
            }
        };
        match outcome {
            Ok(found) => {
                for (op, found) in batch.drain(..).zip(found) {
                    let result = match found {
                        None => Ok(()),
                        Some(found) => Err(StoreError::Conflict {
                            channel_id: op.id,
                            expected: match op.kind {
                                WriteKind::Put { expected, .. } => expected,
                                WriteKind::Remove { expected } => Some(expected),
                            },
                            found,
                        }),
                    };
                    let _ = op.reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, writes = batch.len(), "a group commit failed");
                for op in batch.drain(..) {
                    let _ = op.reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    /// One transaction, pipelined: `BEGIN`; one `UPDATE … FROM unnest(…)` for every
    /// compare-and-set of a stored channel (the common case); a statement for each other
    /// write (first writes, removals); `COMMIT`. Returns, per write, `None` if it was
    /// applied or `Some(found)` (the stored version) if not.
    async fn execute(&self, batch: &[WriteOp]) -> Result<Vec<Option<Option<u64>>>, StoreError> {
        let conn = self.link.conn().await?;
        let c = &conn.client;
        // The batched compare-and-sets.
        let mut up_ids: Vec<&[u8]> = Vec::new();
        let mut up_expected: Vec<i64> = Vec::new();
        let mut up_versions: Vec<i64> = Vec::new();
        let mut up_records: Vec<&[u8]> = Vec::new();
        let mut up_keep: Vec<bool> = Vec::new();
        // The rest, one statement each: (index in the batch, statement, parameters).
        let mut singles: Vec<(usize, &tokio_postgres::Statement, Params)> = Vec::new();
        for (i, op) in batch.iter().enumerate() {
            let id = op.id.0.as_slice();
            match &op.kind {
                WriteKind::Put {
                    expected: Some(expected),
                    version,
                    bytes,
                    keep_hold,
                } => {
                    up_ids.push(id);
                    up_expected.push(as_i64(*expected));
                    up_versions.push(as_i64(*version));
                    up_records.push(bytes);
                    up_keep.push(*keep_hold);
                }
                WriteKind::Put {
                    expected: None,
                    version,
                    bytes,
                    keep_hold,
                } => singles.push((
                    i,
                    &conn.st.cas_insert,
                    vec![
                        Box::new(id.to_vec()),
                        Box::new(as_i64(*version)),
                        Box::new(bytes.clone()),
                        Box::new(*keep_hold),
                        Box::new(self.instance.clone()),
                        Box::new(self.hold_ms),
                    ],
                )),
                WriteKind::Remove { expected } => singles.push((
                    i,
                    &conn.st.remove,
                    vec![Box::new(id.to_vec()), Box::new(as_i64(*expected))],
                )),
            }
        }
        let begin = c.batch_execute("BEGIN");
        let updates = async {
            if up_ids.is_empty() {
                return Ok(Vec::new());
            }
            c.query(
                &conn.st.cas_batch,
                &[
                    &up_ids,
                    &up_expected,
                    &up_versions,
                    &up_records,
                    &up_keep,
                    &self.instance,
                    &self.hold_ms,
                ],
            )
            .await
        };
        let others = join_all(singles.iter().map(|(_, statement, p)| {
            let refs: Vec<&(dyn ToSql + Sync)> = p
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            async move { c.execute(*statement, &refs).await }
        }));
        let commit = c.batch_execute("COMMIT");
        // Polled in order, so the statements go out in order on the one connection.
        let (began, updated, written, committed) =
            futures_util::join!(begin, updates, others, commit);
        began.map_err(unavailable("BEGIN of a group commit"))?;
        let updated = updated.map_err(unavailable("the compare-and-sets of a group commit"))?;
        let mut applied = vec![false; batch.len()];
        let updated: std::collections::HashSet<&[u8]> =
            updated.iter().map(|r| r.get::<_, &[u8]>(0)).collect();
        for (i, op) in batch.iter().enumerate() {
            if matches!(
                op.kind,
                WriteKind::Put {
                    expected: Some(_),
                    ..
                }
            ) {
                applied[i] = updated.contains(op.id.0.as_slice());
            }
        }
        for ((i, _, _), w) in singles.iter().zip(written) {
            applied[*i] = w.map_err(unavailable("a write of a group commit"))? == 1;
        }
        committed.map_err(unavailable("COMMIT of a group commit"))?;
        if applied.iter().all(|a| *a) {
            return Ok(vec![None; batch.len()]);
        }
        // Conflicts: report what is stored, as sled does.
        let ids: Vec<&[u8]> = batch.iter().map(|op| op.id.0.as_slice()).collect();
        let lost: Vec<&[u8]> = ids
            .iter()
            .zip(&applied)
            .filter(|(_, a)| !**a)
            .map(|(id, _)| *id)
            .collect();
        let rows = c
            .query(&conn.st.versions, &[&lost])
            .await
            .map_err(unavailable("reading versions after a conflict"))?;
        let stored = |id: &[u8]| {
            rows.iter().find_map(|r| {
                let rid: &[u8] = r.get(0);
                let has_record: bool = r.get(2);
                (rid == id).then(|| has_record.then(|| r.get::<_, i64>(1) as u64))
            })
        };
        Ok(ids
            .iter()
            .zip(&applied)
            .map(|(id, a)| (!*a).then(|| stored(id).flatten()))
            .collect())
    }
}

/// The next batch: what `next` carried over, else the next op waited for, then whatever
/// is queued, up to `max`. One op per channel per batch (a batched `UPDATE … FROM` changes a
/// row once): a second op of a channel is carried over to the following batch. `None` once
/// every sender is gone.
pub(super) async fn next_batch<T>(
    queue: &mut mpsc::Receiver<T>,
    next: &mut Vec<T>,
    max: usize,
    id_of: impl Fn(&T) -> ChannelId,
) -> Option<Vec<T>> {
    let mut batch = std::mem::take(next);
    if batch.is_empty() {
        batch.push(queue.recv().await?);
    }
    let mut ids: std::collections::HashSet<ChannelId> = batch.iter().map(&id_of).collect();
    while batch.len() < max {
        match queue.try_recv() {
            Ok(op) if ids.insert(id_of(&op)) => batch.push(op),
            Ok(op) => next.push(op),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// The parameters of one statement.
type Params = Vec<Box<dyn ToSql + Sync + Send>>;

/// Versions are u64 in memory and bigint in the database; they never reach 2^63.
pub(super) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
