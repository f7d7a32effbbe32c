//! Metric names (one place, so dashboards and code agree) and their descriptions. The
//! `x402-upto` binary installs the Prometheus exporter (`x402_upto_app::telemetry`).
//!
//! Counters of amounts are in the token's atomic units. Labels: `reason` (an x402 reason
//! code) on rejections, `call` on RPC errors, `kind` (`voucher`/`deposit`/`refund`) on
//! accepted payments.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Payments accepted (label `kind`).
pub const PAYMENTS_ACCEPTED: &str = "x402_payments_accepted_total";
/// Payments rejected (label `reason`).
pub const PAYMENTS_REJECTED: &str = "x402_payments_rejected_total";
/// Paid requests whose charge was committed durably.
pub const PAID_REQUESTS: &str = "x402_paid_requests_total";
/// Sum of actual charges committed.
pub const CHARGED: &str = "x402_charged_atomic_total";
/// Time from reading `PAYMENT-SIGNATURE` to the charge being durable (handler excluded);
/// recorded for plain responses (a stream's settlement time depends on the stream).
pub const PAYMENT_OVERHEAD: &str = "x402_payment_overhead_seconds";
/// Charged but not yet claimed on chain, over all channels.
pub const UNCLAIMED: &str = "x402_unclaimed_atomic";
/// Claim transactions sent.
pub const CLAIM_BATCHES: &str = "x402_claim_batches_total";
/// Gas used per claim transaction.
pub const CLAIM_GAS: &str = "x402_claim_gas";
/// Channels per claim transaction.
pub const CLAIM_ROWS: &str = "x402_claim_rows";
/// Sweeps (`settle`) sent, and the amount swept.
pub const SETTLES: &str = "x402_settles_total";
/// Amount swept to receivers.
pub const SETTLED: &str = "x402_settled_atomic_total";
/// Time from a charge being committed to the claim covering it being mined.
pub const SETTLEMENT_LATENCY: &str = "x402_settlement_latency_seconds";
/// RPC failures (label `call`).
pub const RPC_ERRORS: &str = "x402_rpc_errors_total";

/// Requests `serve` refused before pricing: a request target or `Host` that cannot be
/// read one way only (label `reason`).
pub const TARGETS_REFUSED: &str = "x402_targets_refused_total";
/// Upstream answers `serve` could not use, e.g. a malformed `X-Upto-Charge` (label `kind`).
pub const UPSTREAM_ERRORS: &str = "x402_upstream_errors_total";
/// Connections `serve` closed for a timeout (label `kind`: `header_read`, `idle`).
pub const CONNECTIONS_TIMED_OUT: &str = "x402_connections_timed_out_total";
/// Writes per group commit (the sled store's write-ahead log, or the PostgreSQL store).
pub const STORE_BATCH_SIZE: &str = "x402_store_batch_writes";
/// Time to make one group commit durable: the log's synchronous write (sled store), or the
/// transaction (PostgreSQL store). Every writer in the batch waits this long for its answer.
pub const STORE_WRITE_SECONDS: &str = "x402_store_write_seconds";
/// Time a sled group commit waited for more writes to join before writing (its adaptive
/// linger; see `SledOptions::group_linger`).
pub const STORE_GATHER_SECONDS: &str = "x402_store_gather_seconds";
/// Sled group commits by what ended their wait (label `until`: `everyone`, every writer seen
/// recently was queued; `gap`, no new write for a while; `linger`, the full `group_linger`
/// passed while writes kept arriving; `stop`, the store is stopping).
pub const STORE_GATHERS: &str = "x402_store_gathers_total";
/// Requests refused because the channel store was unavailable.
pub const STORE_UNAVAILABLE: &str = "x402_store_unavailable_total";
/// Channels reloaded from a shared store because another instance moved them (label `why`).
pub const CACHE_RELOADS: &str = "x402_cache_reloads_total";
/// 1 while this instance holds the settler lease, else 0.
pub const SETTLER: &str = "x402_settler";

/// Registers descriptions for every metric above (shown by the exporter).
pub fn describe() {
    describe_counter!(PAYMENTS_ACCEPTED, "payments accepted, by kind");
    describe_counter!(PAYMENTS_REJECTED, "payments rejected, by x402 reason code");
    describe_counter!(PAID_REQUESTS, "paid requests committed durably");
    describe_counter!(CHARGED, "sum of actual charges, atomic units");
    describe_histogram!(
        PAYMENT_OVERHEAD,
        Unit::Seconds,
        "payment verification + durable commit time"
    );
    describe_gauge!(UNCLAIMED, "charged but unclaimed, atomic units");
    describe_counter!(CLAIM_BATCHES, "claim transactions sent");
    describe_histogram!(CLAIM_GAS, "gas used per claim transaction");
    describe_histogram!(CLAIM_ROWS, "channels per claim transaction");
    describe_counter!(SETTLES, "settle (sweep) transactions sent");
    describe_counter!(SETTLED, "amount swept to receivers, atomic units");
    describe_histogram!(
        SETTLEMENT_LATENCY,
        Unit::Seconds,
        "charge committed → claim mined"
    );
    describe_counter!(RPC_ERRORS, "rpc failures, by call");
    describe_counter!(
        TARGETS_REFUSED,
        "requests refused before pricing: ambiguous target or bad Host, by reason"
    );
    describe_counter!(UPSTREAM_ERRORS, "unusable upstream answers, by kind");
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "connections closed by a timeout, by kind"
    );
    describe_histogram!(
        STORE_BATCH_SIZE,
        "writes per group commit (sled write-ahead log or PostgreSQL)"
    );
    describe_histogram!(
        STORE_WRITE_SECONDS,
        Unit::Seconds,
        "time to make one group commit durable (log write or PostgreSQL transaction)"
    );
    describe_histogram!(
        STORE_GATHER_SECONDS,
        Unit::Seconds,
        "time a sled group commit waited for more writes before writing"
    );
    describe_counter!(
        STORE_GATHERS,
        "sled group commits by what ended their wait for more writes (until)"
    );
    describe_counter!(
        STORE_UNAVAILABLE,
        "requests refused with 503: channel store unavailable"
    );
    describe_counter!(
        CACHE_RELOADS,
        "channels reloaded from the shared store, by why"
    );
    describe_gauge!(SETTLER, "1 while this instance holds the settler lease");
}
