//! The shared store: channel records, holds, the claim journal and the settler lease in
//! PostgreSQL, so that several `serve` instances can serve any channel
//! (`docs/architecture.md`, "Several instances"; `docs/operations.md` for running it).
//!
//! - **Records** are the codec's bytes (the same format as sled) in `x402_channels`, one row
//!   per channel with its version. Every write is a compare-and-set on that version.
//! - **Group commit**: the writes of this instance go to one writer task that commits
//!   whatever is queued as one transaction (`writer.rs`), `synchronous_commit = on`: a
//!   write returns once it is durable, so [`Store::wait_durable`] has nothing left to wait
//!   for.
//! - **Holds**: [`Store::hold`] marks the row with this instance and an expiry, iff its
//!   version is the one the cache checked the voucher against, so a stale cache is caught
//!   before the handler runs, not after.
//! - **Changes**: every write takes a number from a sequence; [`Store::changes_since`]
//!   reads what moved, to keep caches warm and to show the settler every charge.
//! - **Claim journal** and **deposit authorizations** are tables; the settler's
//!   [`SettlerLease`] is a row with an expiry.
//!
//! | file | holds |
//! |---|---|
//! | `schema.rs` | migrations, applied at start-up under an advisory lock |
//! | `link.rs` | a reconnecting connection with the prepared statements |
//! | `writer.rs` | group commit: one transaction per batch of queued writes |
//! | `holds.rs` | holds in batches: one statement per batch of holds asked for |
//! | `lease.rs` | [`SettlerLease`]: one settler at a time, with takeover on expiry |
//! | `journal.rs` | the claim journal behind the synchronous [`JournalStore`] trait |
//! | `blocked.rs` | the operator's block list of payers, shared by every instance |

mod blocked;
mod holds;
mod journal;
mod lease;
mod link;
mod schema;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use alloy_primitives::B256;
use tokio::sync::{mpsc, oneshot};

pub use lease::SettlerLease;
pub use schema::SCHEMA_VERSION;

use crate::ledger::ChannelRecord;
use crate::store::{Changes, Hold, Store, StoreError, WriteTicket, codec};
use crate::typed_data::ChannelId;
use link::{Link, unavailable};
use writer::{WriteKind, WriteOp, Writer, as_i64};

/// How to connect to and use the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// Connection string, e.g. `postgres://x402@db.internal/x402` (libpq syntax or URL).
    pub url: String,
    /// Connections for reads and holds (each pipelines many concurrent queries).
    pub pool_size: usize,
    /// How long a hold lasts unless the request finishes first (a crashed instance's holds
    /// expire after this).
    pub hold: Duration,
    /// Most writes per group commit.
    pub max_batch: usize,
    /// This instance's name in holds and the lease (default: `pid-<pid>-<random>`).
    pub instance: String,
}

impl PgOptions {
    /// Defaults for `url`: 4 connections, 30 s holds, batches of up to 1,024 writes.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 4,
            hold: Duration::from_secs(30),
            max_batch: 1024,
            instance: format!("pid-{}-{:08x}", std::process::id(), rand::random::<u32>()),
        }
    }
}

/// Channel records, holds, the claim journal and the settler lease in PostgreSQL.
pub struct PostgresStore {
    options: PgOptions,
    config: tokio_postgres::Config,
    reads: Vec<Link>,
    next_read: AtomicUsize,
    /// Holds and releases, `synchronous_commit = off` (see [`Link`]); shared with the hold
    /// batcher, so a release and the holds after it go out on one connection, in order.
    holds: Arc<Link>,
    queue: mpsc::Sender<WriteOp>,
    hold_queue: mpsc::Sender<holds::HoldOp>,
    journal: journal::Bridge,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("instance", &self.options.instance)
            .field("pool_size", &self.options.pool_size)
            .finish()
    }
}

impl PostgresStore {
    /// Connects, applies the migrations and starts the writer. Call inside a tokio runtime.
    pub async fn open(options: PgOptions) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad connection string: {e}")))?;
        let mut config = config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(link::CONNECT_TIMEOUT);
        }
        config.application_name("x402-upto");
        {
            let (mut client, connection) =
                tokio::time::timeout(link::CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls))
                    .await
                    .map_err(|_| StoreError::Unavailable("connecting timed out".into()))?
                    .map_err(|e| StoreError::Unavailable(format!("connecting: {e}")))?;
            let driver = tokio::spawn(connection);
            schema::migrate(&mut client).await?;
            drop(client);
            let _ = driver.await;
        }
        let (queue, rx) = mpsc::channel(options.max_batch.max(1) * 16);
        let writer = Writer {
            link: Link::new(config.clone(), false),
            instance: options.instance.clone(),
            hold_ms: millis(options.hold),
            max_batch: options.max_batch.max(1),
        };
        tokio::spawn(writer.run(rx));
        let (hold_queue, hold_rx) = mpsc::channel(options.max_batch.max(1) * 16);
        let hold_link = Arc::new(Link::new(config.clone(), true));
        let batcher = holds::HoldBatcher {
            link: Arc::clone(&hold_link),
            instance: options.instance.clone(),
            hold_ms: millis(options.hold),
            max_batch: options.max_batch.max(1),
        };
        tokio::spawn(batcher.run(hold_rx));
        let reads = (0..options.pool_size.max(1))
            .map(|_| Link::new(config.clone(), false))
            .collect();
        let journal = journal::Bridge::start(config.clone())?;
        Ok(Self {
            holds: hold_link,
            config,
            reads,
            next_read: AtomicUsize::new(0),
            queue,
            hold_queue,
            journal,
            options,
        })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &PgOptions {
        &self.options
    }

    /// This instance's name in holds and the lease.
    pub fn instance(&self) -> &str {
        &self.options.instance
    }

    /// The settler lease named `name` over this database, held for `ttl` per renewal.
    pub fn settler_lease(&self, name: &str, ttl: Duration) -> SettlerLease {
        SettlerLease::new(
            Link::new(self.config.clone(), false),
            name.to_owned(),
            self.options.instance.clone(),
            ttl,
        )
    }

    /// Registers this instance as live with its relayer address, unless another live
    /// instance (seen within `live`) already sends with it: two processes sending from one
    /// key race on its nonces. Returns the other instance's name in that case.
    pub async fn register_instance(
        &self,
        relayer: alloy_primitives::Address,
        live: Duration,
    ) -> Result<Option<String>, StoreError> {
        let conn = self.read_link().conn().await?;
        let ms = millis(live);
        let other = conn
            .client
            .query_opt(
                "SELECT name FROM x402_instances WHERE relayer = $1 AND name <> $2 \
                 AND seen_at > clock_timestamp() - $3::bigint * interval '1 millisecond'",
                &[&relayer.as_slice(), &self.options.instance, &ms],
            )
            .await
            .map_err(unavailable("reading live instances"))?;
        if let Some(row) = other {
            return Ok(Some(row.get(0)));
        }
        self.heartbeat(relayer).await?;
        Ok(None)
    }

    /// Marks this instance live now (see [`Self::register_instance`]).
    pub async fn heartbeat(&self, relayer: alloy_primitives::Address) -> Result<(), StoreError> {
        let conn = self.read_link().conn().await?;
        conn.client
            .execute(
                "INSERT INTO x402_instances (name, relayer, seen_at) \
                 VALUES ($1, $2, clock_timestamp()) \
                 ON CONFLICT (name) DO UPDATE SET relayer = EXCLUDED.relayer, seen_at = EXCLUDED.seen_at",
                &[&self.options.instance, &relayer.as_slice()],
            )
            .await
            .map_err(unavailable("recording this instance"))?;
        Ok(())
    }

    /// Forgets this instance (graceful shutdown).
    pub async fn deregister_instance(&self) -> Result<(), StoreError> {
        let conn = self.read_link().conn().await?;
        conn.client
            .execute(
                "DELETE FROM x402_instances WHERE name = $1",
                &[&self.options.instance],
            )
            .await
            .map_err(unavailable("forgetting this instance"))?;
        Ok(())
    }

    /// The database's committed transactions so far (`pg_stat_database.xact_commit`: every
    /// client's, not only ours), for benchmarks.
    pub async fn database_commits(&self) -> Result<u64, StoreError> {
        let conn = self.read_link().conn().await?;
        let row = conn
            .client
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(unavailable("reading pg_stat_database"))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn read_link(&self) -> &Link {
        let i = self.next_read.fetch_add(1, Ordering::Relaxed) % self.reads.len();
        &self.reads[i]
    }

    async fn write(&self, id: ChannelId, kind: WriteKind) -> Result<WriteTicket, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(WriteOp { id, kind, reply })
            .await
            .map_err(|_| StoreError::FlusherStopped)?;
        answer.await.map_err(|_| StoreError::FlusherStopped)??;
        Ok(WriteTicket(0))
    }

    async fn put(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
        keep_hold: bool,
    ) -> Result<WriteTicket, StoreError> {
        let bytes = codec::encode(record).map_err(|source| StoreError::Encode {
            channel_id: record.channel_id,
            source,
        })?;
        let kind = WriteKind::Put {
            expected,
            version: record.version,
            bytes,
            keep_hold,
        };
        self.write(record.channel_id, kind).await
    }

    /// Why a hold was refused: the row moved, another instance holds it, or neither any
    /// more (the holder let go in between: try again).
    async fn probe(&self, id: ChannelId, expected: Option<u64>) -> Result<Probe, StoreError> {
        let conn = self.holds.conn().await?;
        let row = conn
            .client
            .query_opt(
                &conn.st.hold_probe,
                &[&id.0.as_slice(), &self.options.instance],
            )
            .await
            .map_err(unavailable("probing a hold"))?;
        let Some(row) = row else {
            return Ok(match expected {
                None => Probe::Free,
                Some(_) => Probe::Moved(None),
            });
        };
        let record: Option<&[u8]> = row.get(1);
        let busy: bool = row.get(2);
        let stored = record
            .map(|bytes| codec::decode(id.0.as_slice(), bytes))
            .transpose()?;
        if stored.as_ref().map(|r| r.version) != expected {
            return Ok(Probe::Moved(stored.map(Box::new)));
        }
        Ok(if busy { Probe::Busy } else { Probe::Free })
    }
}

/// See [`PostgresStore::probe`].
enum Probe {
    Moved(Option<Box<ChannelRecord>>),
    Busy,
    Free,
}

impl Store for PostgresStore {
    async fn compare_and_set(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> Result<WriteTicket, StoreError> {
        self.put(expected, record, false).await
    }

    async fn compare_and_set_held(
        &self,
        expected: Option<u64>,
        record: &ChannelRecord,
    ) -> Result<WriteTicket, StoreError> {
        self.put(expected, record, true).await
    }

    async fn remove(
        &self,
        channel_id: ChannelId,
        expected: u64,
    ) -> Result<WriteTicket, StoreError> {
        self.write(channel_id, WriteKind::Remove { expected }).await
    }

    /// Writes return once committed with `synchronous_commit = on`: nothing left to wait for.
    async fn wait_durable(&self, _ticket: WriteTicket) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load(&self, channel_id: ChannelId) -> Result<Option<ChannelRecord>, StoreError> {
        let conn = self.read_link().conn().await?;
        let key = channel_id.0.as_slice();
        let row = conn
            .client
            .query_opt(&conn.st.load, &[&key])
            .await
            .map_err(unavailable("loading a channel"))?;
        row.map(|r| codec::decode(key, r.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn load_all(&self) -> Result<Vec<ChannelRecord>, StoreError> {
        let conn = self.read_link().conn().await?;
        let rows = conn
            .client
            .query(
                "SELECT id, record FROM x402_channels WHERE record IS NOT NULL",
                &[],
            )
            .await
            .map_err(unavailable("loading every channel"))?;
        rows.iter()
            .map(|r| codec::decode(r.get::<_, &[u8]>(0), r.get::<_, &[u8]>(1)))
            .collect()
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn hold(&self, channel_id: ChannelId, expected: Option<u64>) -> Result<Hold, StoreError> {
        let id = channel_id.0.as_slice();
        let me = &self.options.instance;
        let ms = millis(self.options.hold);
        // Twice at most: a hold released between the refused update and the probe.
        for _ in 0..2 {
            let taken = match expected {
                // The common case goes through the batcher: one statement per batch.
                Some(v) => {
                    let (reply, answer) = oneshot::channel();
                    let op = holds::HoldOp {
                        id: channel_id,
                        expected: v,
                        reply,
                    };
                    self.hold_queue
                        .send(op)
                        .await
                        .map_err(|_| StoreError::FlusherStopped)?;
                    answer.await.map_err(|_| StoreError::FlusherStopped)??
                }
                None => {
                    let conn = self.holds.conn().await?;
                    conn.client
                        .execute(&conn.st.hold_insert, &[&id, me, &ms])
                        .await
                        .map_err(unavailable("taking a hold"))?
                        == 1
                }
            };
            if taken {
                return Ok(Hold::Held);
            }
            match self.probe(channel_id, expected).await? {
                Probe::Moved(stored) => return Ok(Hold::Conflict(stored)),
                Probe::Busy => return Ok(Hold::Busy),
                Probe::Free => continue,
            }
        }
        Ok(Hold::Busy)
    }

    fn release(&self, channel_id: ChannelId) {
        let Some(conn) = self.holds_now() else {
            return;
        };
        // Dropped outside a runtime (shutdown): the hold expires on its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.options.instance.clone();
        runtime.spawn(async move {
            let id = channel_id.0.as_slice();
            if let Err(e) = conn.client.execute(&conn.st.release, &[&id, &me]).await {
                tracing::debug!(channel = %channel_id, error = %e, "releasing a hold failed; it expires");
            }
        });
    }

    async fn changes_since(&self, cursor: u64) -> Result<Changes, StoreError> {
        const PAGE: i64 = 50_000;
        let conn = self.read_link().conn().await?;
        let rows = conn
            .client
            .query(&conn.st.changes, &[&as_i64(cursor), &PAGE])
            .await
            .map_err(unavailable("reading changes"))?;
        let mut out = Changes {
            records: Vec::with_capacity(rows.len()),
            cursor,
        };
        for r in &rows {
            let seq = r.get::<_, i64>(0) as u64;
            out.records
                .push(codec::decode(r.get::<_, &[u8]>(1), r.get::<_, &[u8]>(2))?);
            out.cursor = out.cursor.max(seq);
        }
        Ok(out)
    }

    async fn first_use_of_authorization(&self, nonce: B256) -> Result<bool, StoreError> {
        let conn = self.read_link().conn().await?;
        let inserted = conn
            .client
            .execute(
                "INSERT INTO x402_authorizations (nonce) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&nonce.as_slice()],
            )
            .await
            .map_err(unavailable("recording a deposit authorization"))?;
        Ok(inserted == 1)
    }

    async fn forget_authorization(&self, nonce: B256) {
        let result = match self.read_link().conn().await {
            Ok(conn) => conn
                .client
                .execute(
                    "DELETE FROM x402_authorizations WHERE nonce = $1",
                    &[&nonce.as_slice()],
                )
                .await
                .map_err(unavailable("forgetting a deposit authorization")),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(%nonce, error = %e, "an unsent authorization stays marked as submitted");
        }
    }
}

impl PostgresStore {
    /// The holds connection if it is up (releases are best effort and never connect).
    fn holds_now(&self) -> Option<Arc<link::Conn>> {
        self.holds.live_conn()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
