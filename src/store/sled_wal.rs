//! The sled side of the write-ahead log (`wal.rs`): the store thread's batch writer (log
//! first, acknowledgements, then sled), checkpoints, and the replay into sled at open.

use std::collections::HashMap;
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
/// gets it after the acknowledgements, lazily (the last write per channel), and is flushed
/// at checkpoints.
pub(super) struct LoggedWriter {
    wal: WriteAheadLog,
    db: sled::Db,
    tree: sled::Tree,
    data_file: (PathBuf, File),
    /// Persisted writes not yet in sled, the last one per key (its encoded record, or None
    /// for a removal): sled is a copy of the log, so only the latest value of a key matters.
    unapplied: HashMap<[u8; 32], Option<Vec<u8>>>,
    /// The batch being persisted, encoded (reused between batches).
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
            unapplied: HashMap::new(),
            encoded: Vec::new(),
        }
    }
}

/// Writes one key into sled.
fn insert(tree: &sled::Tree, key: [u8; 32], value: Option<Vec<u8>>) -> Result<(), FlushError> {
    match value {
        Some(value) => tree.insert(key.as_slice(), value),
        None => tree.remove(key.as_slice()),
    }
    .map(drop)
    .map_err(FlushError::Sled)
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
        })?;
        // In log order, so a key's last write wins.
        self.unapplied.extend(self.encoded.drain(..));
        Ok(())
    }

    fn apply(&mut self, max: usize) -> Result<bool, FlushError> {
        // One write at a time, not `apply_batch`: sled 0.34 starts every atomic batch in a
        // fresh I/O buffer, sealing the current one and handing its write to sled's thread
        // pool, whose `notify_all` wakes all 7 of its idle threads (36,000 wake-ups a second
        // at C = 8 in `scripts/bench.sh`). The log makes the writes atomic: a crash between
        // two inserts replays them all at open.
        let checkpoint_due = self.must_apply();
        if checkpoint_due || max >= self.unapplied.len() {
            for (key, value) in self.unapplied.drain() {
                insert(&self.tree, key, value)?;
            }
        } else {
            let keys: Vec<[u8; 32]> = self.unapplied.keys().take(max).copied().collect();
            for key in keys {
                if let Some(value) = self.unapplied.remove(&key) {
                    insert(&self.tree, key, value)?;
                }
            }
            return Ok(false);
        }
        if checkpoint_due {
            checkpoint(&mut self.wal, &self.db, Some(&self.data_file))?;
        }
        Ok(true)
    }

    fn must_apply(&self) -> bool {
        self.wal.used() >= CHECKPOINT_BYTES
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{ChannelRecord, OnchainState};
    use crate::store::codec::test_config;
    use crate::store::sled_store::open_data_file;
    use crate::typed_data::ChannelId;
    use alloy_primitives::B256;

    fn record(key: u8, charged: u128) -> WriteOp {
        let mut r = ChannelRecord::from_chain(
            ChannelId(B256::repeat_byte(key)),
            test_config(),
            OnchainState::default(),
            1,
        );
        r.charged = charged;
        r.version = charged as u64;
        WriteOp::Put(Box::new(r))
    }

    fn stored(tree: &sled::Tree, key: u8) -> Option<u128> {
        tree.get([key; 32])
            .expect("read")
            .map(|v| codec::decode(&[key; 32], &v).expect("decode").charged)
    }

    #[test]
    fn sled_gets_the_last_persisted_write_per_key_in_slices_and_the_log_keeps_them_all() {
        let dir = tempfile::tempdir().expect("dir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled");
        let tree = db.open_tree("t").expect("tree");
        let (wal, _) = open_log(dir.path()).expect("log");
        let file = open_data_file(dir.path()).expect("data file");
        let mut writer = LoggedWriter::new(wal, db, tree.clone(), file);
        // Channel 1 paid three times over two batches, 2 twice, 3 once then removed.
        let mut first = vec![record(1, 10), record(2, 10), record(3, 10)];
        writer.persist(&mut first).expect("persist");
        let mut second = vec![
            record(1, 20),
            record(2, 20),
            record(1, 30),
            WriteOp::Remove(ChannelId(B256::repeat_byte(3))),
        ];
        writer.persist(&mut second).expect("persist");
        assert_eq!(writer.unapplied.len(), 3, "one pending write per key");
        assert_eq!(stored(&tree, 1), None, "nothing in sled before apply");

        assert!(!writer.apply(1).expect("a slice"), "two keys left");
        assert!(writer.apply(usize::MAX).expect("the rest"));
        assert_eq!(stored(&tree, 1), Some(30));
        assert_eq!(stored(&tree, 2), Some(20));
        assert_eq!(stored(&tree, 3), None);

        // The log still holds every write, in order, for a replay.
        drop(writer);
        let (_, ops) = open_log(dir.path()).expect("reopen");
        assert_eq!(ops.len(), 7);
    }
}
