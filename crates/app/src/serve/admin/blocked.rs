//! The block list on disk: a JSON array of payer addresses in one file, replaced atomically
//! (write a temporary file, `fsync` it, rename it over the old one, `fsync` the directory)
//! before the in-memory set changes, so a block the API acknowledged survives a crash.

use std::io::Write;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;
use x402_upto::engine::BlockedPayers;

/// The file and the set it keeps.
#[derive(Clone, Debug)]
pub struct BlockList {
    path: PathBuf,
    payers: BlockedPayers,
    /// One change at a time: two concurrent blocks must not each write a list without the
    /// other's payer.
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
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
            path,
            payers: BlockedPayers::new(payers),
            writing: Default::default(),
        })
    }

    /// The set the engine checks.
    pub fn payers(&self) -> &BlockedPayers {
        &self.payers
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks (`true`) or unblocks `payer`: the file first, then the set. Returns whether
    /// anything changed.
    pub async fn set(&self, payer: Address, blocked: bool) -> Result<bool, String> {
        let _writing = self.writing.lock().await;
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
        let path = self.path.clone();
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
