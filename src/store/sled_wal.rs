//! The sled side of the write-ahead log (`wal.rs`): the store thread's batch writer (log
//! first, acknowledgements, then sled), checkpoints, and the replay into sled at open.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::store::codec;
use crate::store::group_commit::BatchWriter;
use crate::store::sled_store::{WriteOp, clone_data_file, flush_and_sync, open_data_file};
use crate::store::wal::{self, LoggedOp, WriteAheadLog};
use crate::store::{FlushError, StoreError};

/// Log bytes after which the store thread flushes sled and starts a new log epoch. Bounds
/// the replay at open (about 200 bytes a write: ~160,000 writes) and the file's size.
const CHECKPOINT_BYTES: u64 = 32 << 20;

/// Group mode with `fdatasync`: a batch is durable once it is in the write-ahead log; sled
/// gets it after the acknowledgements and is flushed at checkpoints.
pub(super) struct LoggedWriter {
    wal: WriteAheadLog,
    db: sled::Db,
    tree: sled::Tree,
    data_file: (PathBuf, File),
    /// The persisted batch, encoded, waiting for `apply`.
    encoded: Vec<([u8; 32], Option<Vec<u8>>)>,
}

impl LoggedWriter {
    pub(super) fn new(
        wal: WriteAheadLog,
        db: sled::Db,
        tree: sled::Tree,
        data_file: (PathBuf, File),
    ) -> Self {
        Self {
            wal,
            db,
            tree,
            data_file,
            encoded: Vec::new(),
        }
    }
}

impl BatchWriter<WriteOp> for LoggedWriter {
    fn persist(&mut self, batch: &mut Vec<WriteOp>) -> Result<(), FlushError> {
        self.encoded.clear();
        for op in batch.drain(..) {
            match op {
                WriteOp::Put(record) => {
                    let value = codec::encode(&record).map_err(FlushError::Encode)?;
                    let key = record.channel_id.0.0;
                    self.wal.push_parts(wal::PUT, &key, &value);
                    self.encoded.push((key, Some(value)));
                }
                WriteOp::Remove(id) => {
                    self.wal.push_parts(wal::REMOVE, &id.0.0, &[]);
                    self.encoded.push((id.0.0, None));
                }
            }
        }
        self.wal.commit().map_err(|source| FlushError::Log {
            path: self.wal.path().to_path_buf(),
            source,
        })
    }

    fn apply(&mut self, _: Vec<WriteOp>) -> Result<(), FlushError> {
        // One write at a time, not `apply_batch`: sled 0.34 starts every atomic batch in a
        // fresh I/O buffer, sealing the current one and handing its write to sled's thread
        // pool, whose `notify_all` wakes all 7 of its idle threads (36,000 wake-ups a second
        // at C = 8 in `scripts/bench.sh`). The log already makes the batch atomic: a crash
        // between two inserts replays the whole batch at open (the last write per key wins).
        for (key, value) in self.encoded.drain(..) {
            match value {
                Some(value) => self.tree.insert(key.as_slice(), value),
                None => self.tree.remove(key.as_slice()),
            }
            .map_err(FlushError::Sled)?;
        }
        if self.wal.used() >= CHECKPOINT_BYTES {
            checkpoint(&mut self.wal, &self.db, Some(&self.data_file))?;
        }
        Ok(())
    }
}

/// Flushes and syncs sled, then retires the log's writes (they are all in sled now).
fn checkpoint(
    wal: &mut WriteAheadLog,
    db: &sled::Db,
    data_file: Option<&(PathBuf, File)>,
) -> Result<(), FlushError> {
    flush_and_sync(db, data_file)?;
    wal.checkpoint().map_err(|source| FlushError::Log {
        path: wal.path().to_path_buf(),
        source,
    })
}

pub(super) fn open_log(dir: &Path) -> Result<(WriteAheadLog, Vec<LoggedOp>), StoreError> {
    WriteAheadLog::open(dir).map_err(|source| StoreError::Io {
        path: dir.join(wal::FILE_NAME),
        source,
    })
}

/// Applies what the write-ahead log holds to sled, flushes, and starts a new epoch. Returns
/// the log if there is one. Replaying writes sled already has is harmless: per key the last
/// write wins, and the log holds every write since the last checkpoint, in order.
pub(super) fn replay_log(
    dir: &Path,
    db: &sled::Db,
    channels: &sled::Tree,
    data_file: Option<&(PathBuf, File)>,
) -> Result<Option<WriteAheadLog>, StoreError> {
    if !dir.join(wal::FILE_NAME).exists() {
        return Ok(None);
    }
    let (mut wal, ops) = open_log(dir)?;
    if ops.is_empty() {
        return Ok(Some(wal));
    }
    let mut writes = sled::Batch::default();
    for op in &ops {
        match op {
            LoggedOp::Put { key, value } => writes.insert(key.as_slice(), value.as_slice()),
            LoggedOp::Remove { key } => writes.remove(key.as_slice()),
        }
    }
    channels.apply_batch(writes)?;
    let data_file = match clone_data_file(data_file)? {
        Some(file) => file,
        None => open_data_file(dir)?,
    };
    checkpoint(&mut wal, db, Some(&data_file)).map_err(|e| StoreError::FlushFailed(e.into()))?;
    tracing::info!(writes = ops.len(), "replayed the write-ahead log into sled");
    Ok(Some(wal))
}
