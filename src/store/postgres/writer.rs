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
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = queue.recv().await {
            batch.push(first);
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            metrics::histogram!(crate::telemetry::STORE_BATCH_SIZE).record(batch.len() as f64);
            self.commit(&mut batch).await;
            batch.clear();
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

    /// One transaction: `BEGIN`, a statement per write, `COMMIT`, all pipelined. Returns,
    /// per write, `None` if it was applied or `Some(found)` (the stored version) if not.
    async fn execute(&self, batch: &[WriteOp]) -> Result<Vec<Option<Option<u64>>>, StoreError> {
        let conn = self.link.conn().await?;
        let c = &conn.client;
        let ids: Vec<&[u8]> = batch.iter().map(|op| op.id.0.as_slice()).collect();
        let params: Vec<Vec<Box<dyn ToSql + Sync + Send>>> = batch
            .iter()
            .zip(&ids)
            .map(|(op, id)| -> Vec<Box<dyn ToSql + Sync + Send>> {
                let id = id.to_vec();
                match &op.kind {
                    WriteKind::Put {
                        expected: Some(expected),
                        version,
                        bytes,
                        keep_hold,
                    } => vec![
                        Box::new(id),
                        Box::new(as_i64(*expected)),
                        Box::new(as_i64(*version)),
                        Box::new(bytes.clone()),
                        Box::new(*keep_hold),
                        Box::new(self.instance.clone()),
                        Box::new(self.hold_ms),
                    ],
                    WriteKind::Put {
                        expected: None,
                        version,
                        bytes,
                        keep_hold,
                    } => vec![
                        Box::new(id),
                        Box::new(as_i64(*version)),
                        Box::new(bytes.clone()),
                        Box::new(*keep_hold),
                        Box::new(self.instance.clone()),
                        Box::new(self.hold_ms),
                    ],
                    WriteKind::Remove { expected } => {
                        vec![Box::new(id), Box::new(as_i64(*expected))]
                    }
                }
            })
            .collect();
        let begin = c.batch_execute("BEGIN");
        let writes = batch.iter().zip(&params).map(|(op, p)| {
            let statement = match &op.kind {
                WriteKind::Put {
                    expected: Some(_), ..
                } => &conn.st.cas_update,
                WriteKind::Put { expected: None, .. } => &conn.st.cas_insert,
                WriteKind::Remove { .. } => &conn.st.remove,
            };
            let refs: Vec<&(dyn ToSql + Sync)> = p
                .iter()
                .map(|b| b.as_ref() as &(dyn ToSql + Sync))
                .collect();
            async move { c.execute(statement, &refs).await }
        });
        let commit = c.batch_execute("COMMIT");
        // Polled in order, so the statements go out in order on the one connection.
        let (began, written, committed) = futures_util::join!(begin, join_all(writes), commit);
        began.map_err(unavailable("BEGIN of a group commit"))?;
        let mut applied = Vec::with_capacity(written.len());
        for w in written {
            applied.push(w.map_err(unavailable("a write of a group commit"))? == 1);
        }
        committed.map_err(unavailable("COMMIT of a group commit"))?;
        if applied.iter().all(|a| *a) {
            return Ok(vec![None; batch.len()]);
        }
        // Conflicts: report what is stored, as sled does.
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

/// Versions are u64 in memory and bigint in the database; they never reach 2^63.
pub(super) fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
