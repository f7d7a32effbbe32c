//! What the client remembers per channel, kept in one small JSON file per channel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alloy_primitives::Address;

use serde::{Deserialize, Serialize};

use super::{ClientError, PayingClient, Target};
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::wire::{ChannelConfigWire, decimal_u128};

/// The client's view of one channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelState {
    /// The channel id.
    pub channel_id: ChannelId,
    /// CAIP-2 network.
    pub network: String,
    /// Channel parameters.
    pub config: ChannelConfigWire,
    /// `chargedCumulativeAmount` as last confirmed by the server.
    #[serde(with = "decimal_u128")]
    pub charged: u128,
    /// On-chain balance as last reported.
    #[serde(with = "decimal_u128")]
    pub balance: u128,
    /// Sum of our deposits through this client (counts against the spend limit).
    #[serde(with = "decimal_u128")]
    pub deposited: u128,
    /// Highest ceiling we signed.
    #[serde(with = "decimal_u128")]
    pub signed_max: u128,
    /// Paid requests made.
    pub requests: u64,
}

/// The list of receivers this client no longer pays, in the state dir.
const CHEATERS_FILE: &str = "cheaters.json";

/// Where channel files live (`<dir>/<channelId>.json`); `None` keeps state in memory only.
#[derive(Clone, Debug, Default)]
pub(crate) struct StateDir(pub(crate) Option<PathBuf>);

impl StateDir {
    /// The receivers that broke the protocol with this client, and what each did. Kept
    /// next to the channel files so a restarted client still refuses to pay them.
    pub(crate) fn load_cheaters(&self) -> std::io::Result<BTreeMap<Address, String>> {
        let Some(dir) = &self.0 else {
            return Ok(BTreeMap::new());
        };
        match std::fs::read(dir.join(CHEATERS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    /// Writes the whole list atomically (temp file + rename).
    pub(crate) fn save_cheaters(&self, list: &BTreeMap<Address, String>) -> std::io::Result<()> {
        let Some(dir) = &self.0 else {
            return Ok(());
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(CHEATERS_FILE);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(list)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    pub(super) fn path(&self, id: &ChannelId) -> Option<PathBuf> {
        self.0.as_ref().map(|d| d.join(format!("{}.json", id.0)))
    }

    pub(crate) fn load(&self, id: &ChannelId) -> std::io::Result<Option<ChannelState>> {
        let Some(path) = self.path(id) else {
            return Ok(None);
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes atomically (temp file + rename), so a crash leaves the old or the new state.
    pub(crate) fn save(&self, state: &ChannelState) -> std::io::Result<()> {
        let Some(path) = self.path(&state.channel_id) else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(state)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, &path)
    }

    pub(crate) fn remove(&self, id: &ChannelId) -> std::io::Result<()> {
        match self.path(id) {
            Some(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Every saved channel.
    pub(crate) fn list(&self) -> std::io::Result<Vec<ChannelState>> {
        let Some(dir) = &self.0 else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json")
                && path.file_name().is_none_or(|n| n != CHEATERS_FILE)
            {
                let bytes = std::fs::read(&path)?;
                if let Ok(s) = serde_json::from_slice(&bytes) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }
}

/// `Path` helper so callers can pass `&str` or `PathBuf`.
pub(crate) fn dir(p: Option<&Path>) -> StateDir {
    StateDir(p.map(Path::to_path_buf))
}

impl PayingClient {
    /// `t`'s channel state: from memory, else from the state dir; `None` if unknown.
    pub(super) fn state(&self, t: &Target) -> Result<Option<ChannelState>, ClientError> {
        if let Some(s) = self.channels.lock().get(&t.id) {
            return Ok(Some(s.clone()));
        }
        let loaded = self.dir.load(&t.id)?;
        if let Some(s) = &loaded {
            self.channels.lock().insert(t.id, s.clone());
        }
        Ok(loaded)
    }

    /// Saves `s` to the state dir, then keeps it in memory.
    pub(super) fn store(&self, s: ChannelState) -> Result<(), ClientError> {
        self.dir.save(&s)?;
        self.channels.lock().insert(s.channel_id, s);
        Ok(())
    }

    /// The state of a channel we know nothing of yet.
    pub(super) fn fresh(&self, t: &Target) -> ChannelState {
        ChannelState {
            channel_id: t.id,
            network: t.offer.network.clone(),
            config: wire_config(&t.config),
            charged: 0,
            balance: 0,
            deposited: 0,
            signed_max: 0,
            requests: 0,
        }
    }
}

/// `config` as its JSON form.
fn wire_config(c: &ChannelConfig) -> ChannelConfigWire {
    ChannelConfigWire {
        payer: c.payer,
        payer_authorizer: c.payerAuthorizer,
        receiver: c.receiver,
        receiver_authorizer: c.receiverAuthorizer,
        token: c.token,
        withdraw_delay: c.withdrawDelay.to::<u64>(),
        salt: c.salt,
    }
}
