//! The operator's block list (`x402_blocked_payers`), shared by every instance: a block made
//! through one instance's admin API reaches the others when they next read the table.

use alloy_primitives::Address;

use super::PostgresStore;
use super::link::unavailable;
use crate::store::StoreError;

impl PostgresStore {
    /// Every blocked payer, sorted.
    pub async fn blocked_payers(&self) -> Result<Vec<Address>, StoreError> {
        let conn = self.read_link().conn().await?;
        let rows = conn
            .client
            .query("SELECT payer FROM x402_blocked_payers ORDER BY payer", &[])
            .await
            .map_err(unavailable("reading the blocked payers"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let bytes: &[u8] = r.get(0);
                (bytes.len() == 20).then(|| Address::from_slice(bytes))
            })
            .collect())
    }

    /// Blocks (`true`) or unblocks `payer`, durably (one committed statement). Returns
    /// whether the table changed.
    pub async fn set_payer_blocked(
        &self,
        payer: Address,
        blocked: bool,
    ) -> Result<bool, StoreError> {
        let conn = self.read_link().conn().await?;
        let sql = if blocked {
            "INSERT INTO x402_blocked_payers (payer) VALUES ($1) ON CONFLICT DO NOTHING"
        } else {
            "DELETE FROM x402_blocked_payers WHERE payer = $1"
        };
        let n = conn
            .client
            .execute(sql, &[&payer.as_slice()])
            .await
            .map_err(unavailable("writing the blocked payers"))?;
        Ok(n > 0)
    }
}
