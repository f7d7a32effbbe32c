//! Holds in batches: the holds that requests of this instance ask for while a batch runs are
//! taken together by one `UPDATE … FROM unnest(…)` in one transaction, the way the writer
//! commits writes (`writer.rs`). One database transaction per request would cap an
//! instance at what one backend can commit per second, whatever the cores.
//!
//! Only the common case is batched: a stored channel at an expected version. A hold the
//! batch did not take (moved, busy, or never stored) is answered `false` and the store
//! probes it on its own to say why.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::link::{Link, unavailable};
use super::writer::{as_i64, next_batch};
use crate::store::StoreError;
use crate::typed_data::ChannelId;

/// How long a batch may take before its connection is presumed stuck.
const BATCH_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) const HOLD_BATCH: &str = "UPDATE x402_channels AS c SET holder = $3, \
     held_until = clock_timestamp() + $4::bigint * interval '1 millisecond' \
     FROM unnest($1::bytea[], $2::bigint[]) AS r(id, version) \
     WHERE c.id = r.id AND c.version = r.version AND c.record IS NOT NULL \
       AND (c.holder IS NULL OR c.holder = $3 OR c.held_until < clock_timestamp()) \
     RETURNING c.id";

/// One hold asked for.
pub(super) struct HoldOp {
    pub id: ChannelId,
    pub expected: u64,
    pub reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The task that takes holds in batches.
pub(super) struct HoldBatcher {
    pub link: std::sync::Arc<Link>,
    pub instance: String,
    pub hold_ms: i64,
    pub max_batch: usize,
}

impl HoldBatcher {
    /// Runs until every sender is gone.
    pub(super) async fn run(self, mut queue: mpsc::Receiver<HoldOp>) {
        let mut next: Vec<HoldOp> = Vec::new();
        while let Some(batch) = next_batch(&mut queue, &mut next, self.max_batch, |op| op.id).await
        {
            self.take(batch).await;
        }
    }

    async fn take(&self, batch: Vec<HoldOp>) {
        let result = match tokio::time::timeout(BATCH_TIMEOUT, self.execute(&batch)).await {
            Ok(result) => result,
            Err(_) => {
                self.link.reset();
                Err(StoreError::Unavailable("taking holds timed out".into()))
            }
        };
        match result {
            Ok(taken) => {
                for op in batch {
                    let _ = op.reply.send(Ok(taken.contains(&op.id)));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for op in batch {
                    let _ = op.reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }

    async fn execute(&self, batch: &[HoldOp]) -> Result<HashSet<ChannelId>, StoreError> {
        let conn = self.link.conn().await?;
        let ids: Vec<&[u8]> = batch.iter().map(|op| op.id.0.as_slice()).collect();
        let versions: Vec<i64> = batch.iter().map(|op| as_i64(op.expected)).collect();
        let rows = conn
            .client
            .query(
                &conn.st.hold_batch,
                &[&ids, &versions, &self.instance, &self.hold_ms],
            )
            .await
            .map_err(unavailable("taking holds"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id: &[u8] = r.get(0);
                <[u8; 32]>::try_from(id).ok().map(|b| ChannelId(b.into()))
            })
            .collect())
    }
}
