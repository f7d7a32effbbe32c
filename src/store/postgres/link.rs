//! One connection to the database that reconnects when it breaks, with the store's
//! statements prepared on it. tokio-postgres pipelines concurrent queries on one
//! connection, so many tasks share a link; the store keeps a few of them as its pool.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::{Client, NoTls, Statement};

use crate::store::StoreError;

/// How long a connection attempt may take before the store says "unavailable".
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A live connection and its prepared statements.
pub(super) struct Conn {
    pub client: Client,
    pub st: Statements,
}

/// The store's statements (see `mod.rs` for what each one is for).
pub(super) struct Statements {
    pub cas_batch: Statement,
    pub cas_insert: Statement,
    pub remove: Statement,
    pub versions: Statement,
    pub hold_batch: Statement,
    pub hold_insert: Statement,
    pub hold_probe: Statement,
    pub release: Statement,
    pub load: Statement,
    pub changes: Statement,
}

/// The compare-and-sets of stored channels in one batch: each row moves from `expected`
/// to `version` with its new record; `keep` keeps the hold (a renewal) or releases it (a
/// request's commit). `$6` is this instance, `$7` the hold's length (ms). Returns the ids
/// written; the others lost their compare-and-set.
const CAS_BATCH: &str = "UPDATE x402_channels AS c SET version = r.version, record = r.record, \
     seq = nextval('x402_channel_seq'), \
     holder = CASE WHEN r.keep THEN c.holder ELSE NULL END, \
     held_until = CASE WHEN r.keep AND c.holder = $6 \
         THEN clock_timestamp() + $7::bigint * interval '1 millisecond' \
         WHEN r.keep THEN c.held_until ELSE NULL END \
     FROM unnest($1::bytea[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bool[]) \
         AS r(id, expected, version, record, keep) \
     WHERE c.id = r.id AND c.version = r.expected AND c.record IS NOT NULL \
     RETURNING c.id";

/// First write of a channel; a placeholder row left by a hold (`record IS NULL`) is taken over.
const CAS_INSERT: &str = "INSERT INTO x402_channels AS c (id, version, record, seq) \
     VALUES ($1, $2, $3, nextval('x402_channel_seq')) \
     ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, record = EXCLUDED.record, \
         seq = EXCLUDED.seq, \
         holder = CASE WHEN $4 THEN c.holder ELSE NULL END, \
         held_until = CASE WHEN $4 AND c.holder = $5 \
             THEN clock_timestamp() + $6::bigint * interval '1 millisecond' \
             WHEN $4 THEN c.held_until ELSE NULL END \
     WHERE c.record IS NULL";

/// A hold on a channel no instance has written yet: a placeholder row without a record.
const HOLD_INSERT: &str = "INSERT INTO x402_channels AS c (id, version, record, seq, holder, held_until) \
     VALUES ($1, 0, NULL, nextval('x402_channel_seq'), $2, \
             clock_timestamp() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (id) DO UPDATE SET holder = EXCLUDED.holder, held_until = EXCLUDED.held_until \
     WHERE c.record IS NULL \
       AND (c.holder IS NULL OR c.holder = EXCLUDED.holder OR c.held_until < clock_timestamp())";

const HOLD_PROBE: &str = "SELECT version, record, \
     (holder IS NOT NULL AND holder <> $2 AND held_until >= clock_timestamp()) AS busy \
     FROM x402_channels WHERE id = $1";

/// A link to the database: connects on first use and again after the connection broke.
pub(super) struct Link {
    config: tokio_postgres::Config,
    /// Holds need no durability: a hold lost in a database crash only lets another instance
    /// serve the channel concurrently, which the version compare-and-set still catches.
    relaxed: bool,
    current: parking_lot::Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub(super) fn new(config: tokio_postgres::Config, relaxed: bool) -> Self {
        Self {
            config,
            relaxed,
            current: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The live connection, connecting if there is none.
    pub(super) async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.live() {
            return Ok(c);
        }
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.connect())
            .await
            .map_err(|_| StoreError::Unavailable("connecting timed out".into()))??;
        let conn = Arc::new(conn);
        *self.current.lock() = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Drops the connection (after a timeout: it may be stuck); the next use reconnects.
    pub(super) fn reset(&self) {
        *self.current.lock() = None;
    }

    /// The connection if it is up, without connecting.
    pub(super) fn live_conn(&self) -> Option<Arc<Conn>> {
        self.live()
    }

    fn live(&self) -> Option<Arc<Conn>> {
        let guard = self.current.lock();
        guard.as_ref().filter(|c| !c.client.is_closed()).cloned()
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let (client, connection) = self
            .config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "database connection ended");
            }
        });
        if self.relaxed {
            client
                .batch_execute("SET synchronous_commit = off")
                .await
                .map_err(unavailable("configuring the connection"))?;
        }
        let st = Statements::prepare(&client).await?;
        Ok(Conn { client, st })
    }
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Self, StoreError> {
        let p = |sql: &'static str| async move {
            c.prepare(sql)
                .await
                .map_err(unavailable("preparing statements"))
        };
        Ok(Self {
            cas_batch: p(CAS_BATCH).await?,
            cas_insert: p(CAS_INSERT).await?,
            remove: p("DELETE FROM x402_channels WHERE id = $1 AND version = $2 AND record IS NOT NULL")
                .await?,
            versions: p("SELECT id, version, record IS NOT NULL FROM x402_channels WHERE id = ANY($1)")
                .await?,
            hold_batch: p(super::holds::HOLD_BATCH).await?,
            hold_insert: p(HOLD_INSERT).await?,
            hold_probe: p(HOLD_PROBE).await?,
            release: p("UPDATE x402_channels SET holder = NULL, held_until = NULL WHERE id = $1 AND holder = $2")
                .await?,
            load: p("SELECT record FROM x402_channels WHERE id = $1 AND record IS NOT NULL").await?,
            changes: p("SELECT seq, id, record FROM x402_channels WHERE seq > $1 AND record IS NOT NULL \
                 ORDER BY seq LIMIT $2")
            .await?,
        })
    }
}

/// A database error on a live path: the database is unavailable to this request.
pub(super) fn unavailable(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        if e.is_closed() {
            StoreError::Unavailable(format!("{context}: connection closed"))
        } else {
            StoreError::Postgres { context, source: e }
        }
    }
}
