//! SIGKILL crash test: every acknowledged voucher must be on disk after the process dies.
//!
//! The binary's hidden `internal store-load` commits vouchers through ledger + store and
//! prints a line only after the write is durable. We read some acks, kill the process with
//! SIGKILL (`Child::kill`), reopen the store and check nothing acknowledged was lost and the
//! state is one the process could have acknowledged (exact amounts, valid signatures).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use x402_upto::verify::recover_signer;
use x402_upto::{ChannelRecord, Durability, SledOptions, SledStore, Store};
use x402_upto_app::harness::store_load::{load_config, load_domain, load_payer};

const CHANNELS: u32 = 8;

/// One acknowledged commit: `ack <channel> <version> <charged> <signed_max>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ack {
    channel: u32,
    version: u64,
    charged: u128,
    signed_max: u128,
}

fn parse(line: &str) -> Option<Ack> {
    let mut it = line.strip_suffix('\n')?.split(' ');
    (it.next()? == "ack").then_some(())?;
    Some(Ack {
        channel: it.next()?.parse().ok()?,
        version: it.next()?.parse().ok()?,
        charged: it.next()?.parse().ok()?,
        signed_max: it.next()?.parse().ok()?,
    })
}

/// The load charges `1 + k % 50` on its `k`-th request (price `2 + 2 * (k % 50)`).
fn charged_after(version: u64) -> u128 {
    (0..version).map(|k| 1 + u128::from(k % 50)).sum()
}

fn store_load(dir: &Path, mode: &str, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_x402-upto"))
        .args([
            "internal",
            "store-load",
            "--durability",
            mode,
            "--channels",
            &CHANNELS.to_string(),
        ])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the x402-upto binary")
}

/// Runs the load, kills it after `wanted` acks, returns every ack it printed.
fn run_and_kill(dir: &Path, mode: &str, wanted: usize) -> Vec<Ack> {
    let mut child = store_load(dir, mode, &[]);
    let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut acks = Vec::new();
    let mut line = String::new();
    while acks.len() < wanted {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            let mut err = String::new();
            child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("store-load exited after {} acks: {err}", acks.len());
        }
        acks.push(parse(&line).unwrap_or_else(|| panic!("bad line {line:?}")));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Lines already in the pipe were acknowledged before the kill; a torn last line was not.
    loop {
        line.clear();
        if out.read_line(&mut line).expect("read stdout") == 0 {
            break;
        }
        if let Some(ack) = parse(&line) {
            acks.push(ack);
        }
    }
    acks
}

fn reload(dir: &Path) -> BTreeMap<u32, ChannelRecord> {
    let store = SledStore::open(dir, SledOptions::with_durability(Durability::None))
        .expect("reopen after kill");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let records = rt.block_on(store.load_all()).expect("load");
    let domain = load_domain();
    let payer = load_payer().address();
    let by_id: BTreeMap<_, _> = records.into_iter().map(|r| (r.channel_id, r)).collect();
    (0..CHANNELS)
        .filter_map(|i| {
            by_id
                .get(&domain.channel_id(&load_config(i, payer)))
                .map(|r| (i, r.clone()))
        })
        .collect()
}

/// What was found is a state the process acknowledged or could have: exact amounts for its
/// version, a ceiling the payer really signed.
fn assert_consistent(channel: u32, r: &ChannelRecord) {
    assert_eq!(
        r.charged,
        charged_after(r.version),
        "channel {channel}: charged does not match version {}",
        r.version
    );
    let last_price = 2 + 2 * u128::from((r.version - 1) % 50);
    assert_eq!(
        r.signed_max_claimable,
        charged_after(r.version - 1) + last_price,
        "channel {channel}"
    );
    let digest = load_domain().voucher_digest(r.channel_id, r.signed_max_claimable);
    assert_eq!(
        recover_signer(&digest, &r.signature),
        Ok(load_payer().address()),
        "channel {channel}: signature"
    );
}

fn assert_no_acknowledged_voucher_lost(mode: &str, wanted: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let acks = run_and_kill(dir.path(), mode, wanted);
    let stored = reload(dir.path());
    let mut latest: BTreeMap<u32, Ack> = BTreeMap::new();
    for ack in &acks {
        assert_eq!(
            ack.charged,
            charged_after(ack.version),
            "the load itself is deterministic"
        );
        let e = latest.entry(ack.channel).or_insert(*ack);
        if ack.version > e.version {
            *e = *ack;
        }
    }
    for (channel, ack) in &latest {
        let r = stored
            .get(channel)
            .unwrap_or_else(|| panic!("{mode}: channel {channel} acked but not stored"));
        assert!(
            r.version >= ack.version,
            "{mode}: channel {channel} lost acked version {} (found {})",
            ack.version,
            r.version
        );
        if r.version == ack.version {
            assert_eq!(
                (r.charged, r.signed_max_claimable),
                (ack.charged, ack.signed_max)
            );
        }
    }
    for (channel, r) in &stored {
        assert_consistent(*channel, r);
    }

    // The process restarts from what it stored and keeps going.
    let child = store_load(dir.path(), mode, &["--commits", "2"]);
    let output = child.wait_with_output().expect("second run");
    assert!(
        output.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let after = reload(dir.path());
    for (channel, r) in &stored {
        assert_eq!(
            after.get(channel).map(|a| a.version),
            Some(r.version + 2),
            "{mode}: channel {channel}"
        );
    }
}

#[test]
fn group_commit_loses_no_acknowledged_voucher_under_sigkill() {
    assert_no_acknowledged_voucher_lost("group", 400);
}

#[test]
fn flush_per_commit_loses_no_acknowledged_voucher_under_sigkill() {
    assert_no_acknowledged_voucher_lost("every", 150);
}

#[test]
fn no_durability_mode_leaves_a_consistent_store_and_is_documented_as_lossy() {
    // Whatever survives must be consistent; a loss is allowed, so none is asserted.
    let dir = tempfile::tempdir().expect("tempdir");
    run_and_kill(dir.path(), "none", 400);
    for (channel, r) in reload(dir.path()) {
        assert_consistent(channel, &r);
    }
    let doc =
        std::fs::read_to_string(x402_upto_testkit::workspace_root().join("docs/durability.md"))
            .expect("docs/durability.md");
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `none`"))
        .expect("a table row for `none`");
    let sigkill_column = row.split('|').nth(3).map(str::trim);
    assert_eq!(
        sigkill_column,
        Some("no"),
        "`none` must be documented as not surviving SIGKILL: {row}"
    );
}
