//! What the dashboard draws over time, kept in memory and bounded: a ring of samples
//! (charged, claimed, unclaimed, paid requests) taken every `sample_secs`, and a ring of the
//! transactions the settler mined here (claims, sweeps, refunds), with the paid-request
//! count at each claim so a batch's gas can be set against the requests it paid for.
//! Counters (paid requests, rejections by reason) are read from the process's Prometheus
//! recorder, the same numbers `/metrics` exports.

use std::collections::VecDeque;

use alloy_primitives::{Address, B256};
use parking_lot::Mutex;
use serde::Serialize;
use x402_upto::settlement::SettlementEvent;
use x402_upto::telemetry;

use super::views::amount;

/// Transactions kept.
pub const MAX_TRANSACTIONS: usize = 200;

/// One point of the chart. `earned` = `claimed` + `unclaimed` only falls when money owed is
/// lost (a withdrawal finalized over unclaimed charges); a refund or a channel leaving the
/// ledger does not move it.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Unix seconds.
    pub at: u64,
    /// `claimed + unclaimed` (atomic units).
    #[serde(with = "amount")]
    pub earned: u128,
    /// `receivers(payTo, asset).totalClaimed` on chain: every claim ever made for `payTo`.
    #[serde(with = "amount")]
    pub claimed: u128,
    /// `receivers(payTo, asset).totalSettled`: swept to `payTo`.
    #[serde(with = "amount")]
    pub swept: u128,
    /// Charged but not yet claimed, over the ledger's channels.
    #[serde(with = "amount")]
    pub unclaimed: u128,
    /// Paid requests committed by this process since it started.
    pub paid_requests: u64,
}

/// A transaction the settler mined in this process.
#[derive(Clone, Debug, Serialize)]
pub struct Transaction {
    /// `claim`, `sweep` or `refund`.
    pub kind: &'static str,
    /// Unix seconds when it was seen mined.
    pub at: u64,
    /// The transaction.
    pub tx_hash: B256,
    /// Its block, when known.
    pub block: Option<u64>,
    /// Claim: the journal batch id.
    pub batch: Option<u64>,
    /// Claim: rows; sweep and refund: 1.
    pub rows: usize,
    /// Claim: added to `totalClaimed`; sweep: swept; refund: returned to the payer.
    #[serde(with = "amount")]
    pub amount: u128,
    /// Refund: claimed in the same transaction.
    #[serde(with = "amount::option")]
    pub claimed: Option<u128>,
    /// Refund: the channel; sweep: the receiver.
    pub channel_id: Option<x402_upto::typed_data::ChannelId>,
    /// Sweep: the receiver.
    pub receiver: Option<Address>,
    /// Gas used (from the receipt).
    pub gas_used: Option<u64>,
    /// `effectiveGasPrice` (wei), from the receipt once read.
    #[serde(with = "amount::option")]
    pub gas_price_wei: Option<u128>,
    /// `gas_used * effectiveGasPrice` (wei).
    #[serde(with = "amount::option")]
    pub fee_wei: Option<u128>,
    /// Claim: paid requests committed here since the previous claim batch seen here.
    pub paid_requests: Option<u64>,
    /// Claim: `gas_used / paid_requests`.
    pub gas_per_paid_request: Option<u64>,
    /// Claim: the paid-request counter when the batch was mined.
    #[serde(skip)]
    pub paid_requests_at: u64,
}

/// The two rings.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    samples: Mutex<VecDeque<Sample>>,
    transactions: Mutex<VecDeque<Transaction>>,
}

impl History {
    /// Rings of `capacity` samples and [`MAX_TRANSACTIONS`] transactions.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            samples: Mutex::new(VecDeque::new()),
            transactions: Mutex::new(VecDeque::new()),
        }
    }

    /// Adds a sample, dropping the oldest past capacity.
    pub fn push_sample(&self, sample: Sample) {
        let mut s = self.samples.lock();
        if s.len() == self.capacity {
            s.pop_front();
        }
        s.push_back(sample);
    }

    /// The newest sample.
    pub fn last_sample(&self) -> Option<Sample> {
        self.samples.lock().back().cloned()
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().iter().cloned().collect()
    }

    /// Records what the settler did (called on the settlement task: no I/O here).
    pub fn observe(&self, event: &SettlementEvent, now: u64) {
        let paid_now = counter_total(telemetry::PAID_REQUESTS);
        let mut txs = self.transactions.lock();
        let base = Transaction {
            kind: "claim",
            at: now,
            tx_hash: B256::ZERO,
            block: None,
            batch: None,
            rows: 1,
            amount: 0,
            claimed: None,
            channel_id: None,
            receiver: None,
            gas_used: None,
            gas_price_wei: None,
            fee_wei: None,
            paid_requests: None,
            gas_per_paid_request: None,
            paid_requests_at: 0,
        };
        let tx = match event {
            SettlementEvent::Claimed {
                batch,
                tx_hash,
                block,
                rows,
                amount,
                gas_used,
            } => {
                let before = txs
                    .iter()
                    .rev()
                    .find(|t| t.kind == "claim")
                    .map_or(0, |t| t.paid_requests_at);
                let paid = paid_now.map(|n| n.saturating_sub(before));
                Transaction {
                    tx_hash: *tx_hash,
                    block: *block,
                    batch: Some(*batch),
                    rows: *rows,
                    amount: *amount,
                    gas_used: Some(*gas_used),
                    paid_requests: paid,
                    gas_per_paid_request: paid.filter(|n| *n > 0).map(|n| gas_used / n),
                    paid_requests_at: paid_now.unwrap_or(before),
                    ..base
                }
            }
            SettlementEvent::Swept {
                tx_hash,
                receiver,
                amount,
                gas_used,
            } => Transaction {
                kind: "sweep",
                tx_hash: *tx_hash,
                amount: *amount,
                receiver: Some(*receiver),
                gas_used: Some(*gas_used),
                ..base
            },
            SettlementEvent::Refunded(r) => Transaction {
                kind: "refund",
                tx_hash: r.tx_hash,
                amount: r.amount,
                claimed: Some(r.claimed),
                channel_id: Some(r.channel_id),
                ..base
            },
        };
        if txs.len() == MAX_TRANSACTIONS {
            txs.pop_front();
        }
        txs.push_back(tx);
    }

    /// Every transaction kept, newest first.
    pub fn transactions(&self) -> Vec<Transaction> {
        self.transactions.lock().iter().rev().cloned().collect()
    }

    /// Hashes of transactions whose receipt (gas price, fee) has not been read yet.
    pub fn without_receipt(&self) -> Vec<B256> {
        self.transactions
            .lock()
            .iter()
            .filter(|t| t.fee_wei.is_none())
            .map(|t| t.tx_hash)
            .collect()
    }

    /// Fills in what `hash`'s receipt says.
    pub fn set_receipt(&self, hash: B256, gas_used: u64, gas_price: u128, block: Option<u64>) {
        for t in self.transactions.lock().iter_mut() {
            if t.tx_hash == hash {
                t.gas_used = Some(gas_used);
                t.gas_price_wei = Some(gas_price);
                t.fee_wei = Some(u128::from(gas_used).saturating_mul(gas_price));
                t.block = t.block.or(block);
            }
        }
    }
}

/// The current value of counter `name` summed over its labels, from the recorder.
pub fn counter_total(name: &str) -> Option<u64> {
    let text = crate::telemetry::prometheus_handle()?.render();
    Some(
        counter_by_label(&text, name, "")
            .into_iter()
            .map(|(_, v)| v)
            .sum(),
    )
}

/// The values of counter `name` by the value of its label `label` (`""`: one row, no label),
/// read from Prometheus text exposition.
pub fn counter_by_label(text: &str, name: &str, label: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        // Counters render as integers or floats (`3` or `3.0`).
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = if label.is_empty() {
            String::new()
        } else {
            label_value(labels, label).unwrap_or_default()
        };
        let value = value.max(0.0) as u64;
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v += value,
            None => out.push((key, value)),
        }
    }
    out
}

/// `label="value"` out of a label set (values as the exporter escapes them: no `"` inside).
fn label_value(labels: &str, label: &str) -> Option<String> {
    let start = labels.find(&format!("{label}=\""))? + label.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_label_from_the_exposition() {
        let text = "# TYPE x402_payments_rejected_total counter\n\
            x402_payments_rejected_total{reason=\"invalid_payload\"} 3\n\
            x402_payments_rejected_total{reason=\"invalid_batch_settlement_evm_payer_blocked\"} 1\n\
            x402_payments_rejected_total_other 9\n\
            x402_paid_requests_total 12\n";
        assert_eq!(
            counter_by_label(text, "x402_payments_rejected_total", "reason"),
            vec![
                ("invalid_payload".to_owned(), 3),
                ("invalid_batch_settlement_evm_payer_blocked".to_owned(), 1)
            ]
        );
        assert_eq!(
            counter_by_label(text, "x402_paid_requests_total", ""),
            vec![(String::new(), 12)]
        );
    }

    #[test]
    fn the_sample_ring_is_bounded() {
        let h = History::new(3);
        for at in 0..5 {
            h.push_sample(Sample {
                at,
                earned: 0,
                claimed: 0,
                swept: 0,
                unclaimed: 0,
                paid_requests: 0,
            });
        }
        let at: Vec<u64> = h.samples().iter().map(|s| s.at).collect();
        assert_eq!(at, vec![2, 3, 4]);
    }
}
