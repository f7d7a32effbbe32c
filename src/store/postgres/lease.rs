//! One settler at a time: a row in `x402_leases` names the instance that runs the claim
//! scheduler, the sweeps, the refunds and the chain watcher, with an expiry in the
//! database's clock (no trust in the instances' clocks). The holder renews it well before
//! it expires; another instance takes it over only once it has expired, so a dead settler
//! is replaced within one lease length.
//!
//! The holder also stops acting on its own well before the database would let another
//! take over: [`SettlerLease::is_safe`] is true only within half a lease length of the
//! last successful renewal, measured on this instance's monotonic clock.

use std::time::{Duration, Instant};

use super::link::{Link, unavailable};
use crate::store::StoreError;

/// The settler lease of one deployment.
pub struct SettlerLease {
    link: Link,
    name: String,
    instance: String,
    ttl: Duration,
    renewed: parking_lot::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for SettlerLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettlerLease")
            .field("name", &self.name)
            .field("instance", &self.instance)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl SettlerLease {
    pub(super) fn new(link: Link, name: String, instance: String, ttl: Duration) -> Self {
        Self {
            link,
            name,
            instance,
            ttl,
            renewed: parking_lot::Mutex::new(None),
        }
    }

    /// How long one renewal holds.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Takes the lease if it is free or expired, or renews it if this instance holds it,
    /// recording `polled_at` (unix seconds of the holder's last successful chain poll; see
    /// [`Self::last_poll`]). Returns the lease's epoch (it grows with every change of
    /// holder) when held.
    pub async fn acquire(&self, polled_at: u64) -> Result<Option<i64>, StoreError> {
        let started = Instant::now();
        let polled = i64::try_from(polled_at).unwrap_or(i64::MAX);
        let conn = self.link.conn().await?;
        let ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let row = conn
            .client
            .query_opt(
                "INSERT INTO x402_leases AS l (name, holder, expires_at, epoch, polled_at) \
                 VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond', 1, $4) \
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, \
                     expires_at = EXCLUDED.expires_at, \
                     polled_at = greatest(l.polled_at, EXCLUDED.polled_at), \
                     epoch = CASE WHEN l.holder = EXCLUDED.holder THEN l.epoch ELSE l.epoch + 1 END \
                 WHERE l.holder = EXCLUDED.holder OR l.expires_at < clock_timestamp() \
                 RETURNING epoch",
                &[&self.name, &self.instance, &ms, &polled],
            )
            .await
            .map_err(unavailable("taking the settler lease"));
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                *self.renewed.lock() = None;
                return Err(e);
            }
        };
        // Counted from before the query: the database's expiry is at least that late.
        *self.renewed.lock() = row.as_ref().map(|_| started);
        Ok(row.map(|r| r.get(0)))
    }

    /// Whether this instance may act as the settler now: it holds the lease and renewed it
    /// less than half a lease length ago.
    pub fn is_safe(&self) -> bool {
        self.renewed
            .lock()
            .is_some_and(|at| at.elapsed() < self.ttl / 2)
    }

    /// Unix seconds of the settler's last successful chain poll, as it last reported (0:
    /// never). Instances that do not watch the chain themselves judge their mirrors'
    /// freshness by it.
    pub async fn last_poll(&self) -> Result<u64, StoreError> {
        let conn = self.link.conn().await?;
        let row = conn
            .client
            .query_opt(
                "SELECT polled_at FROM x402_leases WHERE name = $1",
                &[&self.name],
            )
            .await
            .map_err(unavailable("reading the settler lease"))?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    /// Gives the lease up (graceful shutdown), so another instance takes over at once.
    pub async fn release(&self) -> Result<(), StoreError> {
        *self.renewed.lock() = None;
        let conn = self.link.conn().await?;
        conn.client
            .execute(
                "UPDATE x402_leases SET expires_at = clock_timestamp() - interval '1 second' \
                 WHERE name = $1 AND holder = $2",
                &[&self.name, &self.instance],
            )
            .await
            .map_err(unavailable("releasing the settler lease"))?;
        Ok(())
    }
}
