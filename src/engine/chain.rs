//! What the engine needs from the chain, as a small object-safe trait.
//!
//! The engine is tested against an in-memory double; production wires the settlement
//! engineer's `EscrowClient` in through a thin adapter. Failures carry the spec's reason
//! (`…_deposit_simulation_failed`, `…_rpc_read_failed`, …) so the 402 says what went wrong.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, B256};

use crate::ledger::{Claimable, OnchainState};
use crate::reason::Reason;
use crate::typed_data::{ChannelConfig, ChannelId};
use crate::verify::{Erc1271Checker, Erc1271Error};
use crate::wire::Erc3009Authorization;

/// A boxed, sendable future (keeps [`ChainAccess`] object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`ChainAccess`] call failed; nothing was applied to the ledger. The reason is the one
/// the 402 carries (see `Engine::chain_reject`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainAccessError {
    /// Reason code for the 402.
    pub reason: Reason,
    /// What happened (logged, and sent as the human-readable message).
    pub message: String,
}

impl fmt::Display for ChainAccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for ChainAccessError {}

/// A confirmed deposit or refund.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainOutcome {
    /// The mined transaction.
    pub tx_hash: B256,
    /// Deposited or refunded amount.
    pub amount: u128,
    /// The channel's on-chain state after the transaction.
    pub state: OnchainState,
}

/// Chain access for the engine: reads, and the two transactions a client may ask for.
pub trait ChainAccess: Send + Sync + fmt::Debug + 'static {
    /// `channels(id)`, `pendingWithdrawals(id)`, `refundNonce(id)`.
    fn channel_state(&self, id: ChannelId)
    -> BoxFuture<'_, Result<OnchainState, ChainAccessError>>;

    /// Submits the payer's ERC-3009 deposit through the collector and waits for the receipt.
    fn deposit<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        authorization: &'a Erc3009Authorization,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>>;

    /// Refunds `amount` to the payer (`refundWithSignature`), claiming `claim` in the same
    /// transaction when vouchers are outstanding, and waits for the receipt.
    fn refund<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        claim: Option<&'a Claimable>,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>>;

    /// ERC-1271 `isValidSignature(digest, signature)` on a smart-wallet payer: `Ok(true)`
    /// only for the magic value, `Ok(false)` for "not signed" (a revert, a wallet without
    /// code), `Err` when the wallet could not be asked. Only channels whose
    /// `payerAuthorizer` is zero get here; ECDSA channels never call it.
    ///
    /// The default cannot ask anyone, so an implementation without it refuses smart-wallet
    /// vouchers with `rpc_read_failed` rather than accepting them unchecked.
    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        digest: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainAccessError>> {
        let _ = (digest, signature);
        Box::pin(async move {
            Err(ChainAccessError {
                reason: Reason::RpcReadFailed,
                message: format!("no ERC-1271 check available for wallet {wallet}"),
            })
        })
    }
}

/// [`ChainAccess`] as the verifier's [`Erc1271Checker`], so the engine runs the same
/// [`crate::verify::SignedVoucher::verify`] as the facilitator (including its ECDSA attempt
/// with the wallet address itself, which costs no RPC).
pub(crate) struct ChainErc1271<'a>(pub(crate) &'a dyn ChainAccess);

impl Erc1271Checker for ChainErc1271<'_> {
    async fn is_valid_signature(
        &self,
        wallet: Address,
        digest: B256,
        signature: &[u8],
    ) -> Result<bool, Erc1271Error> {
        self.0
            .is_valid_signature(wallet, digest, signature)
            .await
            .map_err(|f| Erc1271Error {
                wallet,
                source: f.message.into(),
            })
    }
}

/// The settlement engineer's escrow client, as the engine's chain access.
impl ChainAccess for crate::chain::escrow::EscrowClient {
    fn channel_state(
        &self,
        id: ChannelId,
    ) -> BoxFuture<'_, Result<OnchainState, ChainAccessError>> {
        Box::pin(async move {
            crate::chain::escrow::EscrowClient::channel_state(self, id)
                .await
                .map_err(failure)
        })
    }

    fn deposit<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        authorization: &'a Erc3009Authorization,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>> {
        Box::pin(async move {
            let auth = crate::chain::escrow::Erc3009Deposit {
                valid_after: authorization.valid_after,
                valid_before: authorization.valid_before,
                salt: authorization.salt,
                signature: authorization.signature.clone(),
            };
            let out = self
                .deposit_erc3009(config, amount, &auth)
                .await
                .map_err(failure)?;
            Ok(ChainOutcome {
                tx_hash: out.tx_hash,
                amount,
                state: out.state,
            })
        })
    }

    fn refund<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        claim: Option<&'a Claimable>,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>> {
        Box::pin(async move {
            let out = crate::chain::escrow::EscrowClient::refund(self, config, amount, claim)
                .await
                .map_err(failure)?;
            Ok(ChainOutcome {
                tx_hash: out.tx_hash,
                amount: out.refunded,
                state: out.state,
            })
        })
    }

    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        digest: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainAccessError>> {
        Box::pin(async move {
            Erc1271Checker::is_valid_signature(self, wallet, digest, signature)
                .await
                .map_err(|e| ChainAccessError {
                    reason: Reason::RpcReadFailed,
                    message: format!("{e}: {}", e.source).chars().take(500).collect(),
                })
        })
    }
}

fn failure(e: crate::chain::escrow::ChainError) -> ChainAccessError {
    // The full cause chain, bounded: revert data can be long.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ChainAccessError {
        reason: e.reason(),
        message: message.chars().take(500).collect(),
    }
}

/// Limits on chain reads made for channels the ledger does not know.
///
/// Such a read is triggered by a payload anyone can forge (the channel id is the hash of a
/// config the sender chooses), so without a limit a sender could spray random ids and turn
/// every request into an `eth_call`. Three cheap defences, all on the cold path only (a known
/// channel never reads): a token bucket on the reads actually sent, a bounded negative cache
/// of ids found empty on chain (answered `channel_not_found` without a read), and coalescing
/// of concurrent reads of one id into a single call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColdReadLimits {
    /// Sustained cold reads per second (the bucket's refill rate; 0: no refill).
    pub per_second: u32,
    /// Reads allowed at once after a quiet period (the bucket's size).
    pub burst: u32,
    /// How long an id found without balance is refused without asking the chain again. A
    /// deposit made elsewhere is therefore seen at most this late; deposits submitted
    /// through this server are seen at once.
    pub negative_ttl: Duration,
    /// Most ids remembered as empty (oldest forgotten first); bounds the cache's memory.
    pub negative_capacity: usize,
    /// After a smart wallet refused a voucher (`isValidSignature` said no), further ERC-1271
    /// calls for that channel wait this long (refused meanwhile with `rpc_read_failed`).
    /// Anyone who knows a smart-wallet channel's config can send it garbage signatures, each
    /// costing one `eth_call`; an honest payer almost never sends a refused one. 0: off.
    pub erc1271_backoff: Duration,
}

impl Default for ColdReadLimits {
    fn default() -> Self {
        Self {
            // Generous enough for an onboarding surge (every first deposit reads once),
            // small enough that a spray costs the RPC at most ~50 calls a second.
            per_second: 50,
            burst: 500,
            negative_ttl: Duration::from_secs(10),
            negative_capacity: 10_000,
            erc1271_backoff: Duration::from_secs(1),
        }
    }
}

/// The refusal when the bucket is empty: not the client's fault, retry later.
fn limited() -> ChainAccessError {
    ChainAccessError {
        reason: Reason::RpcReadFailed,
        message: "too many chain reads for unknown channels right now; retry shortly".into(),
    }
}

type Inflight = Arc<tokio::sync::OnceCell<OnchainState>>;

/// Cold-read guard of one engine: see [`ColdReadLimits`].
#[derive(Debug)]
pub(crate) struct ColdReads {
    state: parking_lot::Mutex<ColdState>,
    inflight: parking_lot::Mutex<HashMap<ChannelId, Inflight>>,
    /// When a smart wallet last refused a voucher, per channel (bounded like `empty`).
    wallet_refusals: parking_lot::Mutex<HashMap<ChannelId, Instant>>,
}

#[derive(Debug)]
struct ColdState {
    limits: ColdReadLimits,
    tokens: f64,
    refilled: Instant,
    empty: HashMap<ChannelId, Instant>,
    /// Insertion order of `empty`, for eviction (may hold ids already removed).
    order: VecDeque<ChannelId>,
}

/// One request's interest in an in-flight read; see [`ColdReads::read`].
struct InflightEntry<'a> {
    map: &'a parking_lot::Mutex<HashMap<ChannelId, Inflight>>,
    id: ChannelId,
    cell: Inflight,
}

impl Drop for InflightEntry<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        // Only our own cell: a newer read of the same id may have replaced it.
        if map
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.cell))
        {
            map.remove(&self.id);
        }
    }
}

impl ColdReads {
    pub(crate) fn new(limits: ColdReadLimits) -> Self {
        Self {
            state: parking_lot::Mutex::new(ColdState {
                limits,
                tokens: f64::from(limits.burst),
                refilled: Instant::now(),
                empty: HashMap::new(),
                order: VecDeque::new(),
            }),
            inflight: Default::default(),
            wallet_refusals: Default::default(),
        }
    }

    /// Whether `id`'s wallet refused a voucher less than `erc1271_backoff` ago.
    pub(crate) fn wallet_backing_off(&self, id: &ChannelId) -> bool {
        let backoff = self.state.lock().limits.erc1271_backoff;
        let mut refusals = self.wallet_refusals.lock();
        match refusals.get(id) {
            Some(at) if at.elapsed() < backoff => true,
            Some(_) => {
                refusals.remove(id);
                false
            }
            None => false,
        }
    }

    /// `id`'s wallet just refused a voucher.
    pub(crate) fn note_wallet_refusal(&self, id: ChannelId) {
        let (backoff, cap) = {
            let s = self.state.lock();
            (s.limits.erc1271_backoff, s.limits.negative_capacity)
        };
        if backoff.is_zero() || cap == 0 {
            return;
        }
        let mut refusals = self.wallet_refusals.lock();
        if refusals.len() >= cap {
            // Expired entries first; if every entry is live, start over (the backoff is a
            // brake, not a record).
            refusals.retain(|_, at| at.elapsed() < backoff);
            if refusals.len() >= cap {
                refusals.clear();
            }
        }
        refusals.insert(id, Instant::now());
    }

    /// Replaces the limits (the bucket is refilled to the new burst).
    pub(crate) fn set_limits(&self, limits: ColdReadLimits) {
        let mut s = self.state.lock();
        s.limits = limits;
        s.tokens = f64::from(limits.burst);
        s.refilled = Instant::now();
        while s.empty.len() > limits.negative_capacity {
            match s.order.pop_front() {
                Some(old) => {
                    s.empty.remove(&old);
                }
                None => s.empty.clear(),
            }
        }
    }

    /// Reads `id` from chain, within the limits. With `negative`, an id recently found empty
    /// is answered as empty (balance 0) without a read; the deposit path passes `false`
    /// (an empty channel is what a first deposit expects).
    pub(crate) async fn read(
        &self,
        chain: &dyn ChainAccess,
        id: ChannelId,
        negative: bool,
    ) -> Result<OnchainState, ChainAccessError> {
        if negative && self.known_empty(&id) {
            return Ok(OnchainState::default());
        }
        let cell = self.inflight.lock().entry(id).or_default().clone();
        // Removes the entry when this request finishes or is dropped mid-read (a client
        // that disconnects must not leave an entry behind for every id it named).
        let _entry = InflightEntry {
            map: &self.inflight,
            id,
            cell: Arc::clone(&cell),
        };
        // Every waiter runs the same initializer; the first one reads, the others wait for
        // its answer. A failed (or limited) read initializes nothing, so each waiter then
        // tries for itself (and, when limited, fails fast without a read).
        let result = cell
            .get_or_try_init(|| async {
                if !self.take_token() {
                    metrics::counter!("x402_cold_reads_limited_total").increment(1);
                    return Err(limited());
                }
                chain.channel_state(id).await
            })
            .await
            .copied();
        if let Ok(state) = &result {
            if state.balance == 0 {
                self.remember_empty(id);
            } else {
                self.forget_empty(&id);
            }
        }
        result
    }

    /// The channel got a balance through this server (a deposit): stop answering it empty.
    pub(crate) fn forget_empty(&self, id: &ChannelId) {
        self.state.lock().empty.remove(id);
    }

    fn known_empty(&self, id: &ChannelId) -> bool {
        let mut s = self.state.lock();
        let ttl = s.limits.negative_ttl;
        match s.empty.get(id) {
            Some(at) if at.elapsed() < ttl => true,
            Some(_) => {
                s.empty.remove(id);
                false
            }
            None => false,
        }
    }

    fn remember_empty(&self, id: ChannelId) {
        let mut s = self.state.lock();
        if s.limits.negative_capacity == 0 {
            return;
        }
        while s.empty.len() >= s.limits.negative_capacity {
            match s.order.pop_front() {
                Some(old) => {
                    s.empty.remove(&old);
                }
                None => break,
            }
        }
        if s.empty.insert(id, Instant::now()).is_none() {
            s.order.push_back(id);
        }
        // `order` keeps ids already removed by expiry or a deposit; once it is twice the
        // capacity, rebuild it from the live entries (amortized O(log n) per insert).
        if s.order.len() > s.limits.negative_capacity.saturating_mul(2) {
            let mut live: Vec<(Instant, ChannelId)> =
                s.empty.iter().map(|(id, at)| (*at, *id)).collect();
            live.sort_unstable();
            s.order = live.into_iter().map(|(_, id)| id).collect();
        }
    }

    fn take_token(&self) -> bool {
        let mut s = self.state.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(s.refilled).as_secs_f64();
        s.refilled = now;
        let cap = f64::from(s.limits.burst);
        s.tokens = (s.tokens + elapsed * f64::from(s.limits.per_second)).min(cap);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::B256;

    fn id(n: u8) -> ChannelId {
        ChannelId(B256::repeat_byte(n))
    }

    #[test]
    fn the_negative_cache_is_bounded_and_forgets_the_oldest_first() {
        let cold = ColdReads::new(ColdReadLimits {
            negative_capacity: 2,
            ..ColdReadLimits::default()
        });
        for n in 1..=3 {
            cold.remember_empty(id(n));
        }
        assert!(!cold.known_empty(&id(1)));
        assert!(cold.known_empty(&id(2)) && cold.known_empty(&id(3)));
        // Churn through removals: the order queue stays bounded too.
        for round in 0..100u8 {
            cold.remember_empty(id(round));
            cold.forget_empty(&id(round));
        }
        let s = cold.state.lock();
        assert!(s.empty.len() <= 2);
        assert!(s.order.len() <= 4, "{}", s.order.len());
    }

    /// A node that never answers.
    #[derive(Debug)]
    struct Silent;

    impl ChainAccess for Silent {
        fn channel_state(
            &self,
            _: ChannelId,
        ) -> BoxFuture<'_, Result<OnchainState, ChainAccessError>> {
            Box::pin(std::future::pending())
        }
        fn deposit<'a>(
            &'a self,
            _: &'a ChannelConfig,
            _: u128,
            _: &'a Erc3009Authorization,
        ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>> {
            Box::pin(std::future::pending())
        }
        fn refund<'a>(
            &'a self,
            _: &'a ChannelConfig,
            _: u128,
            _: Option<&'a Claimable>,
        ) -> BoxFuture<'a, Result<ChainOutcome, ChainAccessError>> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test]
    async fn a_read_abandoned_by_its_client_leaves_no_entry_behind() {
        let cold = ColdReads::new(ColdReadLimits::default());
        for n in 0..10 {
            let read = cold.read(&Silent, id(n), true);
            let out = tokio::time::timeout(Duration::from_millis(5), read).await;
            assert!(out.is_err(), "the silent node cannot answer");
        }
        assert!(cold.inflight.lock().is_empty());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_refuses_without_refill() {
        let cold = ColdReads::new(ColdReadLimits {
            per_second: 0,
            burst: 3,
            ..ColdReadLimits::default()
        });
        let taken: Vec<bool> = (0..5).map(|_| cold.take_token()).collect();
        assert_eq!(taken, [true, true, true, false, false]);
    }
}
