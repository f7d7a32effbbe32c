//! Where the block list is kept, durably, before the in-memory set the engine checks
//! changes (so a block the API acknowledged survives a crash):
//!
//! - with the sled store, a JSON array of payer addresses in one file, replaced atomically
//!   (write a temporary file, `fsync` it, rename it over the old one, `fsync` the directory);
//! - with the PostgreSQL store, the `x402_blocked_payers` table every instance shares; each
//!   instance re-reads it every second ([`BlockList::refresh`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy_primitives::Address;
use x402_upto::engine::BlockedPayers;
use x402_upto::store::PostgresStore;

/// The durable home of the list.
#[derive(Clone, Debug)]
enum Home {
    File(PathBuf),
    Table(Arc<PostgresStore>),
    /// PostgreSQL, before the store is open (`serve` opens it after the admin listener).
    NotYet,
}

/// The list's home and the set it fills.
#[derive(Clone, Debug)]
pub struct BlockList {
    home: Home,
    payers: BlockedPayers,
    /// One change at a time: two concurrent blocks must not each write a list without the
    /// other's payer.
    writing: Arc<tokio::sync::Mutex<()>>,
}

impl BlockList {
    /// Loads `path` (a missing file is an empty list; an unreadable one is an error, so a
    /// block is never silently lost).
    pub fn open(path: PathBuf) -> Result<Self, String> {
        let payers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Vec<Address>>(&bytes)
                .map_err(|e| format!("block list {}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("block list {}: {e}", path.display())),
        };
        Ok(Self {
            home: Home::File(path),
            payers: BlockedPayers::new(payers),
            writing: Default::default(),
        })
    }

    /// A list kept in the PostgreSQL store, which [`Self::use_table`] opens later.
    pub fn in_table() -> Self {
        Self {
            home: Home::NotYet,
            payers: BlockedPayers::default(),
            writing: Default::default(),
        }
    }

    /// Keeps the list in `store`'s table from now on, and reads it.
    pub async fn use_table(&mut self, store: Arc<PostgresStore>) -> Result<(), String> {
        self.home = Home::Table(store);
        self.refresh().await
    }

    /// Re-reads a shared list (another instance may have changed it); a file needs none.
    pub async fn refresh(&self) -> Result<(), String> {
        if let Home::Table(store) = &self.home {
            let _writing = self.writing.lock().await;
            let payers = store
                .blocked_payers()
                .await
                .map_err(|e| format!("reading the block list: {e}"))?;
            self.payers.replace(payers);
        }
        Ok(())
    }

    /// The set the engine checks.
    pub fn payers(&self) -> &BlockedPayers {
        &self.payers
    }

    /// Where the list is kept, for the operator.
    pub fn home(&self) -> String {
        match &self.home {
            Home::File(p) => p.display().to_string(),
            Home::Table(_) | Home::NotYet => "postgres: x402_blocked_payers".into(),
        }
    }

    /// Blocks (`true`) or unblocks `payer`: the file or the table first, then the set.
    /// Returns whether anything changed.
    pub async fn set(&self, payer: Address, blocked: bool) -> Result<bool, String> {
        let _writing = self.writing.lock().await;
        let path = match &self.home {
            Home::File(path) => path.clone(),
            Home::Table(store) => {
                let changed = store
                    .set_payer_blocked(payer, blocked)
                    .await
                    .map_err(|e| format!("writing the block list: {e}"))?;
                if blocked {
                    self.payers.insert(payer);
                } else {
                    self.payers.remove(&payer);
                }
                return Ok(changed);
            }
            Home::NotYet => return Err("the block list's store is not open yet".into()),
        };
        let mut next = self.payers.list();
        let changed = if blocked {
            !next.contains(&payer) && {
                next.push(payer);
                next.sort();
                true
            }
        } else {
            let before = next.len();
            next.retain(|p| *p != payer);
            next.len() != before
        };
        if !changed {
            return Ok(false);
        }
        tokio::task::spawn_blocking(move || write_atomically(&path, &next))
            .await
            .map_err(|e| e.to_string())??;
        if blocked {
            self.payers.insert(payer);
        } else {
            self.payers.remove(&payer);
        }
        Ok(true)
    }
}

fn write_atomically(path: &Path, payers: &[Address]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("writing the block list {}: {e}", path.display());
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let json = serde_json::to_vec_pretty(payers).map_err(|e| e.to_string())?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
    tmp.write_all(&json).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_block_survives_reopening_and_an_unblock_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked-payers.json");
        let list = BlockList::open(path.clone()).unwrap();
        let (a, b) = (Address::repeat_byte(1), Address::repeat_byte(2));
        assert!(list.set(a, true).await.unwrap());
        assert!(list.set(b, true).await.unwrap());
        assert!(!list.set(b, true).await.unwrap());
        assert!(list.payers().contains(&a));
        let again = BlockList::open(path.clone()).unwrap();
        assert_eq!(again.payers().list(), vec![a, b]);
        assert!(again.set(a, false).await.unwrap());
        assert_eq!(BlockList::open(path).unwrap().payers().list(), vec![b]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocked-payers.json");
        std::fs::write(&path, b"[\"not an address\"]").unwrap();
        assert!(BlockList::open(path).is_err());
    }
}
