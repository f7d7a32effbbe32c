//! The schema, applied at start-up: numbered migrations in one transaction each, under an
//! advisory lock so that instances starting together do not race. A database whose schema
//! is newer than this binary knows is refused rather than written with old assumptions.

use tokio_postgres::Client;

use crate::store::StoreError;

/// Advisory lock key of the migrations (an arbitrary constant: "x402upto" in ASCII).
const MIGRATION_LOCK: i64 = 0x7834_3032_7570_746f;

/// Migration `n` is `MIGRATIONS[n - 1]`. Append only; never edit an applied one.
const MIGRATIONS: &[&str] = &[
    // 1: channel records (the codec's bytes: the same format as sled), the cross-instance
    // hold, a change sequence for caches; the claim journal; submitted deposit
    // authorizations; the settler lease; live instances and their relayer addresses.
    "CREATE SEQUENCE x402_channel_seq;
     CREATE TABLE x402_channels (
         id         bytea PRIMARY KEY CHECK (length(id) = 32),
         version    bigint NOT NULL,
         record     bytea,
         seq        bigint NOT NULL,
         holder     text,
         held_until timestamptz
     );
     CREATE INDEX x402_channels_seq ON x402_channels (seq);
     CREATE TABLE x402_claim_journal (
         id    bigint PRIMARY KEY,
         entry bytea NOT NULL
     );
     CREATE TABLE x402_authorizations (
         nonce        bytea PRIMARY KEY,
         submitted_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE TABLE x402_leases (
         name       text PRIMARY KEY,
         holder     text NOT NULL,
         expires_at timestamptz NOT NULL,
         epoch      bigint NOT NULL,
         polled_at  bigint NOT NULL DEFAULT 0
     );
     CREATE TABLE x402_instances (
         name    text PRIMARY KEY,
         relayer bytea NOT NULL,
         seen_at timestamptz NOT NULL
     );",
    // 2: payers the operator blocked (the admin API), shared by every instance.
    "CREATE TABLE x402_blocked_payers (
         payer      bytea PRIMARY KEY CHECK (length(payer) = 20),
         blocked_at timestamptz NOT NULL DEFAULT now()
     );",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`SCHEMA_VERSION`]. Returns the version found before.
pub(super) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let pg = |context| move |source| StoreError::Postgres { context, source };
    let tx = client
        .transaction()
        .await
        .map_err(pg("starting the migration"))?;
    // First the lock, then even the bookkeeping table: instances starting together would
    // otherwise race on its creation.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("taking the migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS x402_schema (
             version    bigint PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg("creating the schema table"))?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM x402_schema", &[])
        .await
        .map_err(pg("reading the schema version"))?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database schema is at version {found}, newer than this binary's \
             {SCHEMA_VERSION}: upgrade the binary"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i64 + 1;
        tx.batch_execute(sql)
            .await
            .map_err(pg("applying a migration"))?;
        tx.execute("INSERT INTO x402_schema (version) VALUES ($1)", &[&version])
            .await
            .map_err(pg("recording a migration"))?;
        tracing::info!(version, "database schema migrated");
    }
    tx.commit().await.map_err(pg("committing the migration"))?;
    Ok(found)
}
