//! The embedded store: sled 0.34.7.
//!
//! sled 0.34.7's `flush()` is `pwrite` + `sync_file_range` on Linux, not `fsync`: it survives
//! a killed process, not necessarily a power cut (the drive cache is not flushed, nor the
//! file size metadata). With [`SledOptions::fdatasync`] (the default) every flush is followed
//! by `fdatasync` of sled's single data file `<dir>/db`, which closes that gap; see
//! `docs/durability.md` for what that costs.
//!
//! Trees: [`CHANNELS_TREE`] holds one record per channel; [`CLAIM_JOURNAL_TREE`] is reserved
//! for the settlement module's claim journal (not written here).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use alloy_primitives::hex;
use parking_lot::Mutex;

use crate::ledger::ChannelRecord;
use crate::store::codec;
use crate::store::group_commit::GroupCommit;
use crate::store::journal::{JournalEntry, JournalStore};
use crate::store::sled_wal::{LoggedWriter, open_log, replay_log};
use crate::store::{Durability, FlushError, Store, StoreError, WriteTicket};
use crate::typed_data::ChannelId;

/// Tree of channel records, keyed by the 32-byte channel id.
pub const CHANNELS_TREE: &str = "channels.v1";
/// Tree reserved for the settlement module's claim journal (claims sent, not yet confirmed).
pub const CLAIM_JOURNAL_TREE: &str = "claim_journal.v1";

/// How to open a [`SledStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// When a write is acknowledged.
    pub durability: Durability,
    /// `fdatasync` the data file after each flush (power-loss durability; see module docs).
    /// Ignored in [`Durability::None`].
    pub fdatasync: bool,
    /// Group mode only: the longest the flusher lets writes gather once it sees one pending.
    /// The wait is adaptive (`group_commit/`): it ends as soon as every recent writer is
    /// waiting, or 50 µs pass without a new write, so the full linger is paid only while
    /// writes keep arriving. Adds at most this to an acknowledgement.
    pub group_linger: Duration,
    /// Group mode with `fdatasync`: make each batch durable in the write-ahead log
    /// (`wal.rs`: one synchronous write of a preallocated file) and flush sled only
    /// at checkpoints. Off: sled is flushed and its file synced per batch, as before the log.
    pub write_ahead_log: bool,
}

/// Default [`SledOptions::group_linger`], the upper bound of the adaptive wait; chosen by
/// measurement (docs/benchmarks.md).
pub const DEFAULT_GROUP_LINGER: Duration = Duration::from_micros(200);

impl Default for SledOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Group,
            fdatasync: true,
            group_linger: DEFAULT_GROUP_LINGER,
            write_ahead_log: true,
        }
    }
}

impl SledOptions {
    /// Options with `durability` and `fdatasync` on.
    pub fn with_durability(durability: Durability) -> Self {
        Self {
            durability,
            ..Self::default()
        }
    }
}

/// Channel records in sled.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    channels: sled::Tree,
    /// Stored version of every channel. sled holds an exclusive lock on its directory, so
    /// this process is the only writer and the cache is authoritative: a compare-and-set is
    /// one map lookup plus one sled insert, not a sled read plus a sled compare-and-swap.
    /// Filled on first need ([`SledStore::versions`]): by the first `load_all`'s own scan
    /// when a restart begins with one, so a restart reads the tree once, not twice.
    versions: OnceLock<VersionCache>,
    options: SledOptions,
    data_file: Option<(PathBuf, File)>,
    group: Option<GroupCommit<WriteOp>>,
    /// The claim journal's tree, opened on first use (a store never used for claims gets
    /// none).
    journal: OnceLock<sled::Tree>,
}

/// A write handed to the group-commit store thread.
#[derive(Debug)]
pub(super) enum WriteOp {
    Put(Box<ChannelRecord>),
    Remove(ChannelId),
}

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>, options: SledOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let db = open_sled(&dir)?;
        let channels = db.open_tree(CHANNELS_TREE)?;
        let sync = options.fdatasync && options.durability != Durability::None;
        let data_file = if sync {
            Some(open_data_file(&dir)?)
        } else {
            None
        };
        // Make the files' directory entries durable once, so a fresh store survives a crash.
        if sync {
            sync_path(&dir)?;
        }
        // Writes acknowledged from the log but not yet flushed by sled: restore them first,
        // whatever mode the store is opened in now.
        let mut wal = replay_log(&dir, &db, &channels, data_file.as_ref())?;
        let group = match options.durability {
            Durability::Group => {
                let file = clone_data_file(data_file.as_ref())?;
                let (db2, tree) = (db.clone(), channels.clone());
                match file {
                    Some(file) if options.write_ahead_log => {
                        let wal = match wal.take() {
                            Some(wal) => wal,
                            None => open_log(&dir)?.0,
                        };
                        let writer = LoggedWriter::new(wal, db2, tree, file);
                        Some(GroupCommit::start(&dir, options.group_linger, writer)?)
                    }
                    file => {
                        // sled's own flush per batch (and the file's `fdatasync`, if enabled).
                        let write = move |batch: Vec<WriteOp>| {
                            let mut writes = sled::Batch::default();
                            for op in batch {
                                match op {
                                    WriteOp::Put(record) => {
                                        let value =
                                            codec::encode(&record).map_err(FlushError::Encode)?;
                                        writes.insert(record.channel_id.0.as_slice(), value);
                                    }
                                    WriteOp::Remove(id) => writes.remove(id.0.as_slice()),
                                }
                            }
                            tree.apply_batch(writes).map_err(FlushError::Sled)?;
                            flush_and_sync(&db2, file.as_ref())
                        };
                        Some(GroupCommit::start(&dir, options.group_linger, write)?)
                    }
                }
            }
            Durability::None | Durability::Every => None,
        };
        Ok(Self {
            db,
            channels,
            versions: OnceLock::new(),
            options,
            data_file,
            group,
            journal: OnceLock::new(),
        })
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &SledOptions {
        &self.options
    }

    /// The tree reserved for the claim journal ([`CLAIM_JOURNAL_TREE`]).
    pub fn claim_journal(&self) -> Result<sled::Tree, StoreError> {
        self.journal_tree().cloned()
    }

    fn journal_tree(&self) -> Result<&sled::Tree, StoreError> {
        if let Some(tree) = self.journal.get() {
            return Ok(tree);
        }
        let tree = self.db.open_tree(CLAIM_JOURNAL_TREE)?;
        Ok(self.journal.get_or_init(|| tree))
    }

    /// Flushes (and syncs, if enabled) now, whatever the mode. Used at shutdown.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        flush_and_sync(&self.db, self.data_file.as_ref())
            .map_err(|e| StoreError::FlushFailed(e.into()))
    }

    fn cas(
        &self,
        channel_id: ChannelId,
        expected: Option<u64>,
        new: Option<&ChannelRecord>,
    ) -> Result<WriteTicket, StoreError> {
        let key = channel_id.0;
        // Held until the write is applied (or queued, in group mode) so that per channel the
        // check, the write and the queue order are one step.
        let mut shard = self.versions()?.shard(&channel_id).lock();
        let found = shard.get(&channel_id).copied();
        if found != expected {
            return Err(StoreError::Conflict {
                channel_id,
                expected,
                found,
            });
        }
        let ticket = match (&self.group, new) {
            (Some(group), Some(record)) => group.submit(WriteOp::Put(Box::new(record.clone())))?,
            (Some(group), None) => group.submit(WriteOp::Remove(channel_id))?,
            (None, Some(record)) => {
                let value = codec::encode(record)
                    .map_err(|source| StoreError::Encode { channel_id, source })?;
                self.channels.insert(key, value)?;
                WriteTicket(0)
            }
            (None, None) => {
                self.channels.remove(key)?;
                WriteTicket(0)
            }
        };
        match new {
            Some(record) => shard.insert(channel_id, record.version),
            None => shard.remove(&channel_id),
        };
        Ok(ticket)
    }

    /// The version cache; scanned from sled if no `load_all` has filled it yet.
    fn versions(&self) -> Result<&VersionCache, StoreError> {
        if let Some(cache) = self.versions.get() {
            return Ok(cache);
        }
        // Two first writers may both scan: no write comes before the cache exists, so both
        // read the same tree, and whichever cache is kept is right.
        let loaded = VersionCache::load(&self.channels)?;
        Ok(self.versions.get_or_init(|| loaded))
    }

    /// Group mode: reads must see every write queued before them.
    async fn settle_queue(&self) -> Result<(), StoreError> {
        match &self.group {
            Some(group) => group.wait_applied(group.last_issued()).await,
            None => Ok(()),
        }
    }
}

/// Channel id → stored record version, sharded like the ledger.
#[derive(Debug)]
struct VersionCache {
    shards: Box<[Mutex<HashMap<ChannelId, u64>>]>,
}

impl VersionCache {
    const SHARDS: usize = 64;

    fn empty() -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn load(channels: &sled::Tree) -> Result<Self, StoreError> {
        let cache = Self::empty();
        for item in channels.iter() {
            let (key, value) = item?;
            let version = codec::version_of(&key, &value)?;
            let id = key
                .as_ref()
                .try_into()
                .map(|b: [u8; 32]| ChannelId(b.into()))
                .map_err(|_| StoreError::Corrupt {
                    key: hex::encode_prefixed(&key),
                    what: "key is not 32 bytes",
                    source: None,
                })?;
            cache.shard(&id).lock().insert(id, version);
        }
        Ok(cache)
    }

    /// Channels with a stored record.
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn shard(&self, id: &ChannelId) -> &Mutex<HashMap<ChannelId, u64>> {
        // Channel ids are keccak outputs; one byte spreads them evenly over 64 shards.
        &self.shards[usize::from(id.0[31]) % Self::SHARDS]
    }
}

impl Store for SledStore {
    async fn compare_and_set(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> Result<WriteTicket, StoreError> {
        self.cas(record.channel_id, expected, Some(record))
    }

    async fn remove(
        &self,
        channel_id: ChannelId,
        expected: u64,
    ) -> Result<WriteTicket, StoreError> {
        self.cas(channel_id, Some(expected), None)
    }

    async fn wait_durable(&self, ticket: WriteTicket) -> Result<(), StoreError> {
        match self.options.durability {
            Durability::None => Ok(()),
            // Blocks this executor thread for one flush (≈0.1–0.3 ms here); `every` is the
            // simple, slow mode and is not meant for high concurrency.
            Durability::Every => self.flush_now(),
            Durability::Group => match &self.group {
                Some(group) => group.wait(ticket).await,
                None => Err(StoreError::FlusherStopped),
            },
        }
    }

    async fn load(&self, channel_id: ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        self.settle_queue().await?;
        let key = channel_id.0;
        self.channels
            .get(key)?
            .map(|v| codec::decode(key.as_slice(), &v))
            .transpose()
    }

    async fn load_all(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        self.settle_queue().await?;
        // The first load_all fills the version cache from its own scan (decoding checks the
        // header and that the record belongs to its key, as the cache's own scan does).
        let fill = self.versions.get().is_none().then(VersionCache::empty);
        // Not `Tree::len`: in sled 0.34 that is a full scan of its own (3 s at 1,000,000
        // channels, a third of the restart).
        let mut out = Vec::with_capacity(self.versions.get().map_or(0, VersionCache::len));
        for item in self.channels.iter() {
            let (key, value) = item?;
            let record = codec::decode(&key, &value)?;
            if let Some(cache) = &fill {
                let id = record.channel_id;
                cache.shard(&id).lock().insert(id, record.version);
            }
            out.push(record);
        }
        if let Some(cache) = fill {
            // Fails only if a write came first: it scanned for itself, and its cache stays.
            let _ = self.versions.set(cache);
        }
        Ok(out)
    }
}

impl JournalStore for SledStore {
    fn put_entry(&self, entry: &JournalEntry, durable: bool) -> Result<(), StoreError> {
        let value = codec::encode_entry(entry)?;
        self.journal_tree()?.insert(entry.id.to_be_bytes(), value)?;
        if durable { self.flush_now() } else { Ok(()) }
    }

    fn entry(&self, id: u64) -> Result<Option<JournalEntry>, StoreError> {
        let key = id.to_be_bytes();
        self.journal_tree()?
            .get(key)?
            .map(|v| codec::decode_entry(&key, &v))
            .transpose()
    }

    fn remove_entry(&self, id: u64) -> Result<(), StoreError> {
        self.journal_tree()?.remove(id.to_be_bytes())?;
        Ok(())
    }

    fn entries(&self) -> Result<Vec<JournalEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.journal_tree()?.iter() {
            let (k, v) = item?;
            out.push(codec::decode_entry(&k, &v)?);
        }
        Ok(out)
    }

    fn last_entry_id(&self) -> Result<Option<u64>, StoreError> {
        // A key that is not 8 bytes counts as id 0, as it always has; decoding reports it.
        Ok(self
            .journal_tree()?
            .last()?
            .map(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).map_or(0, u64::from_be_bytes)))
    }

    fn entry_count(&self) -> usize {
        self.journal_tree().map_or(0, sled::Tree::len)
    }
}

pub(super) fn flush_and_sync(
    db: &sled::Db,
    data_file: Option<&(PathBuf, File)>,
) -> Result<(), FlushError> {
    db.flush().map_err(FlushError::Sled)?;
    if let Some((path, file)) = data_file {
        file.sync_data().map_err(|source| FlushError::Sync {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

pub(super) fn clone_data_file(
    file: Option<&(PathBuf, File)>,
) -> Result<Option<(PathBuf, File)>, StoreError> {
    file.map(|(path, f)| {
        f.try_clone()
            .map(|f| (path.clone(), f))
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })
    })
    .transpose()
}

/// sled 0.34.7 keeps its whole log (every tree) in one file, `<dir>/db`; values above
/// ~128 KiB would go to `<dir>/blobs/`, which our ~200-byte records never reach.
pub(super) fn open_data_file(dir: &Path) -> Result<(PathBuf, File), StoreError> {
    let path = dir.join("db");
    let file = File::open(&path).map_err(|source| StoreError::Io {
        path: path.clone(),
        source,
    })?;
    Ok((path, file))
}

fn sync_path(dir: &Path) -> Result<(), StoreError> {
    for path in [dir.join("db"), dir.join("conf"), dir.to_path_buf()] {
        if path.exists() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// sled's page cache: a trade between memory and write cost at many channels. Its default
/// (1 GiB) ends up holding the whole channel tree (about 480 bytes per channel at 1,000,000
/// channels, on top of the ledger's ~600); a small one makes most writes page their leaf
/// back in on the store thread, which lengthens every group commit. Paired runs at
/// 1,000,000 channels (`docs/benchmarks.md`, "Scale"): 64 MiB 817 B per channel and paid
/// req/s 0.63–0.78 of 1,000 channels'; 256 MiB 1,013 B, 0.85–0.91; 1 GiB 1,230 B, 0.88–0.96.
/// 64 MiB keeps the memory target; no setting met both targets in these runs.
const CACHE_BYTES: u64 = 64 << 20;

/// Opens sled, waiting up to 5 s while the directory lock is held. sled's background flusher
/// thread releases the lock a moment after its `Db` is dropped, so a store reopened in the
/// same process (a restart in tests, a supervisor restarting the engine) can find it still
/// taken; a lock held by another live process is still an error after the wait.
fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
