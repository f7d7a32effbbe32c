//! Durable channel records: the latest voucher must be on disk before the response leaves.
//!
//! [`Store`] is deliberately narrow so a shared backend (Redis, Postgres) can implement it
//! later: records keyed by channel id, a compare-and-set on the record version, `load_all`
//! on start, and [`Store::wait_durable`] to learn when a write is safe to acknowledge.
//! [`SledStore`] is the embedded default; `docs/durability.md` states exactly what each
//! [`Durability`] mode guarantees, with measurements.
//!
//! | file | holds |
//! |---|---|
//! | `sled_store.rs` | [`SledStore`], tree names, open options |
//! | `group_commit/` | group commit: the writers' handle (`mod.rs`: tickets, waits) and the store thread (`store_thread.rs`: a batch gathered, persisted, its waiters woken, then applied) |
//! | `wal.rs` | the write-ahead log of [`SledStore`]'s group mode: one synchronous write per batch, sled flushed at checkpoints |
//! | `sled_wal.rs` | the log's sled side: the store thread's batch writer, checkpoints, replay at open |
//! | `codec.rs` | on-disk format of channel records and journal entries: format byte, bincode 2 payload |
//! | `persist.rs` | [`persist`]: staged commit → compare-and-set → durable → apply |
//! | `journal.rs` | [`ClaimJournal`] over the [`JournalStore`] trait: claim batches written durably before they are sent |
//! | `postgres/` | [`PostgresStore`]: the shared store of several `serve` instances (holds, group commit, settler lease, journal) |
//!
//! A backend serves the settlement side through two traits: [`Store`] (channel records;
//! idle refunds delete through it) and [`JournalStore`] (the claim journal).

mod codec;
mod group_commit;
mod journal;
mod persist;
mod postgres;
mod sled_store;
mod sled_wal;
mod wal;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ledger::ChannelRecord;
use crate::typed_data::ChannelId;

pub use codec::{FORMAT_V1, FORMAT_V2};
pub use journal::{BatchState, ClaimJournal, JOURNAL_FORMAT_V1, JournalEntry, JournalStore};
pub use persist::{PersistError, persist};
pub use postgres::{PgOptions, PostgresStore, SCHEMA_VERSION, SettlerLease};
pub use sled_store::{
    CHANNELS_TREE, CLAIM_JOURNAL_TREE, DEFAULT_GROUP_LINGER, SledOptions, SledStore,
};

/// When a write counts as durable.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledge at once; the backend flushes on its own schedule (sled: every 500 ms).
    None,
    /// Group commit: a flusher runs flushes back to back; each write waits for the first
    /// flush that starts after it.
    #[default]
    Group,
    /// One flush per write, by the writer.
    Every,
}

impl std::str::FromStr for Durability {
    type Err = DurabilityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "group" => Ok(Self::Group),
            "every" => Ok(Self::Every),
            other => Err(DurabilityParseError(other.chars().take(32).collect())),
        }
    }
}

/// Not `none`, `group` or `every`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown durability mode {0:?} (expected none, group or every)")]
pub struct DurabilityParseError(pub String);

/// Proof of a write, to wait on with [`Store::wait_durable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteTicket(pub(crate) u64);

/// Persistence of channel records.
pub trait Store: Send + Sync {
    /// Writes `record` iff the stored version of its channel is `expected` (`None`: no
    /// record). Fails with [`StoreError::Conflict`] otherwise, writing nothing.
    fn compare_and_set(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send;

    /// Deletes a channel iff its stored version is `expected`.
    fn remove(
        &self,
        channel_id: ChannelId,
        expected: u64,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send;

    /// Resolves once the write behind `ticket` (and every earlier one) is durable as far as
    /// the store's mode promises. Acknowledge a request only after this.
    fn wait_durable(
        &self,
        ticket: WriteTicket,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One channel's record.
    fn load(
        &self,
        channel_id: ChannelId,
    ) -> impl Future<Output = Result<Option<ChannelRecord>, StoreError>> + Send;

    /// Every record, for [`crate::ledger::Ledger::restore`] on start.
    fn load_all(&self) -> impl Future<Output = Result<Vec<ChannelRecord>, StoreError>> + Send;

    /// Whether other processes write the same records (a shared database). The engine then
    /// treats its ledger as a cache: it takes [`Store::hold`] before every handler and
    /// reloads a channel whose stored version moved. `false` (the default): this process is
    /// the only writer and holds in memory are enough.
    fn is_shared(&self) -> bool {
        false
    }

    /// Holds `channel_id` for one request across every process sharing the store, iff its
    /// stored version is `expected` (`None`: not stored yet). A shared store answers
    /// [`Hold::Conflict`] with the stored record when the version moved, and
    /// [`Hold::Busy`] while another process holds it. The next [`Store::compare_and_set`]
    /// of the channel releases the hold; so does [`Store::release`]. The default (one
    /// process) holds nothing and always answers [`Hold::Held`].
    fn hold(
        &self,
        channel_id: ChannelId,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Hold, StoreError>> + Send {
        let _ = (channel_id, expected);
        std::future::ready(Ok(Hold::Held))
    }

    /// Like [`Store::compare_and_set`], but keeps the hold of [`Store::hold`] (a stream's
    /// renewal checkpoint: the request goes on).
    fn compare_and_set_held(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send {
        self.compare_and_set(expected, record)
    }

    /// Releases this process's hold on `channel_id` without a write (the request charged
    /// nothing). Best effort: an unreleased hold expires on its own.
    fn release(&self, channel_id: ChannelId) {
        let _ = channel_id;
    }

    /// Records written since `cursor` by any process, and the cursor to ask from next time
    /// (shared stores; the default has nothing to report). Keeps a cache warm and shows the
    /// settler what other processes charged.
    fn changes_since(
        &self,
        cursor: u64,
    ) -> impl Future<Output = Result<Changes, StoreError>> + Send {
        std::future::ready(Ok(Changes {
            records: Vec::new(),
            cursor,
        }))
    }

    /// Marks an ERC-3009 authorization nonce as submitted, across every process sharing
    /// the store. `Ok(false)`: another process (or an earlier request) already did, so the
    /// deposit must not be sent again. The default (one process) answers `true`; the
    /// engine's in-memory memory of authorizations covers that case.
    fn first_use_of_authorization(
        &self,
        nonce: alloy_primitives::B256,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = nonce;
        std::future::ready(Ok(true))
    }

    /// Undoes [`Store::first_use_of_authorization`] for an authorization that was never
    /// broadcast (its estimate failed), so the payer may submit it again. Best effort.
    fn forget_authorization(
        &self,
        nonce: alloy_primitives::B256,
    ) -> impl Future<Output = ()> + Send {
        let _ = nonce;
        std::future::ready(())
    }
}

/// The answer of [`Store::hold`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The channel is held for this request.
    Held,
    /// The stored version is not the expected one: here is the stored record (`None`: the
    /// channel is not stored). Nothing was held.
    Conflict(Option<Box<ChannelRecord>>),
    /// Another process holds the channel for a request right now.
    Busy,
}

/// What [`Store::changes_since`] found.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    /// Records written since the cursor (in any order; a record may repeat).
    pub records: Vec<ChannelRecord>,
    /// Ask from here next time.
    pub cursor: u64,
}

/// Everything the settlement side (claims, the journal, idle refunds) needs of a backend:
/// its channel records and its claim journal.
pub trait SettlementStore: Store + JournalStore + 'static {}

impl<S: Store + JournalStore + 'static> SettlementStore for S {}

/// A shared store is a store: the engine and the settlement task hold the same one.
impl<S: Store + ?Sized> Store for Arc<S> {
    fn compare_and_set(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send {
        (**self).compare_and_set(expected, record)
    }

    fn remove(
        &self,
        channel_id: ChannelId,
        expected: u64,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send {
        (**self).remove(channel_id, expected)
    }

    fn wait_durable(
        &self,
        ticket: WriteTicket,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).wait_durable(ticket)
    }

    fn load(
        &self,
        channel_id: ChannelId,
    ) -> impl Future<Output = Result<Option<ChannelRecord>, StoreError>> + Send {
        (**self).load(channel_id)
    }

    fn load_all(&self) -> impl Future<Output = Result<Vec<ChannelRecord>, StoreError>> + Send {
        (**self).load_all()
    }

    fn is_shared(&self) -> bool {
        (**self).is_shared()
    }

    fn hold(
        &self,
        channel_id: ChannelId,
        expected: Option<u64>,
    ) -> impl Future<Output = Result<Hold, StoreError>> + Send {
        (**self).hold(channel_id, expected)
    }

    fn compare_and_set_held(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> impl Future<Output = Result<WriteTicket, StoreError>> + Send {
        (**self).compare_and_set_held(expected, record)
    }

    fn release(&self, channel_id: ChannelId) {
        (**self).release(channel_id)
    }

    fn changes_since(
        &self,
        cursor: u64,
    ) -> impl Future<Output = Result<Changes, StoreError>> + Send {
        (**self).changes_since(cursor)
    }

    fn first_use_of_authorization(
        &self,
        nonce: alloy_primitives::B256,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        (**self).first_use_of_authorization(nonce)
    }

    fn forget_authorization(
        &self,
        nonce: alloy_primitives::B256,
    ) -> impl Future<Output = ()> + Send {
        (**self).forget_authorization(nonce)
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored version is not the expected one: another writer moved the channel, or an
    /// earlier write landed whose acknowledgement failed. Reload the channel.
    #[error("version conflict on channel {channel_id}: expected {expected:?}, found {found:?}")]
    Conflict {
        /// Channel concerned.
        channel_id: ChannelId,
        /// Version the writer expected.
        expected: Option<u64>,
        /// Version actually stored.
        found: Option<u64>,
    },
    /// The embedded database failed.
    #[error("sled operation failed")]
    Sled(#[from] sled::Error),
    /// A file operation outside sled failed.
    #[error("i/o on {path}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored value cannot be decoded.
    #[error("stored record under key {key} is corrupt: {what}")]
    Corrupt {
        /// Hex of the key.
        key: String,
        /// What is wrong.
        what: &'static str,
        /// Decoder error, if any.
        #[source]
        source: Option<bincode::error::DecodeError>,
    },
    /// Encoding a record failed.
    #[error("encoding record of channel {channel_id}")]
    Encode {
        /// Channel concerned.
        channel_id: ChannelId,
        /// Cause.
        #[source]
        source: bincode::error::EncodeError,
    },
    /// A flush failed; nothing after it can be acknowledged. Reopen the store.
    #[error("flush failed; the store no longer acknowledges writes")]
    FlushFailed(#[source] Arc<FlushError>),
    /// The flusher thread is gone (the store is shutting down).
    #[error("the store's flusher has stopped")]
    FlusherStopped,
    /// The database answered with an error.
    #[error("postgres: {context}")]
    Postgres {
        /// What was being done.
        context: &'static str,
        /// Cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database cannot be reached (down, restarting, or the connection broke). A write
    /// that failed this way may or may not have committed: reload before writing again.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// Whether the store itself is out of service (as opposed to a conflict or a bad
    /// record): the request should be refused with 503 and retried later.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Postgres { .. } | Self::FlusherStopped
        )
    }
}

/// Why a flush failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// sled's flush (`pwrite` + `sync_file_range`) failed.
    #[error("sled flush")]
    Sled(#[source] sled::Error),
    /// Encoding a queued record failed.
    #[error("encoding a queued record")]
    Encode(#[source] bincode::error::EncodeError),
    /// Writing or syncing the write-ahead log failed.
    #[error("write-ahead log {path}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Our `fdatasync` of the data file failed.
    #[error("fdatasync of {path}")]
    Sync {
        /// The data file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

// Shared across tasks by the server.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SledStore>();
    send_sync::<StoreError>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_modes_parse_from_their_names() {
        for (s, d) in [
            ("none", Durability::None),
            ("group", Durability::Group),
            ("every", Durability::Every),
        ] {
            assert_eq!(s.parse::<Durability>(), Ok(d));
        }
        assert!("fsync".parse::<Durability>().is_err());
        assert_eq!(Durability::default(), Durability::Group);
    }
}
