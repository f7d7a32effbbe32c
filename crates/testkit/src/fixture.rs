//! Shared fixture of the server tests: an engine over a sled store in a temp dir, an
//! in-memory chain double, an axum app with a few priced routes, and payload builders.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256, U256};
use axum::Router;
use axum::body::Body;
use axum::extract::Query;
use axum::routing::get;
use axum::{Extension, http::StatusCode};
use base64::Engine as _;
use http::Request;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tower::ServiceExt;
use x402_upto::engine::{BoxFuture, ChainAccess, ChainFailure, ChainOutcome, Engine, EngineConfig};
use x402_upto::ledger::{Claimable, OnchainState};
use x402_upto::server::{Charge, PaymentLayer, Price};
use x402_upto::typed_data::{ChannelConfig, ChannelId, EscrowDomain, sign_voucher};
use x402_upto::verify::{AllowListErc1271, Erc1271Checker as _};
use x402_upto::wire::{Eip155Network, Erc3009Authorization, SettleResponse, encode_header};
use x402_upto::{Durability, Ledger, Reason, SledOptions, SledStore, Store};

use crate::offchain;

pub const PRICE: u128 = 1000;

/// What the chain double does on the next deposit/refund.
#[derive(Debug, Default)]
pub struct MockChain {
    pub channels: Mutex<HashMap<ChannelId, OnchainState>>,
    pub domain: Mutex<Option<EscrowDomain>>,
    pub fail_deposit: Mutex<Option<Reason>>,
    pub fail_read: Mutex<Option<Reason>>,
    /// When set, refunds wait for a notification (to observe a refund in flight).
    pub refund_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// When set, deposits wait for a notification (to observe a deposit in flight).
    pub deposit_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// Every call of `deposit`, whatever its outcome (each would be a transaction or at
    /// least an estimate on a real chain).
    pub deposit_calls: AtomicUsize,
    pub deposits: AtomicUsize,
    pub refunds: AtomicUsize,
    pub reads: AtomicUsize,
}

impl MockChain {
    /// A chain double answering for [`offchain::domain`], shared with the fixture over it.
    pub fn shared() -> Arc<Self> {
        let chain = Arc::new(Self::default());
        *chain.domain.lock() = Some(offchain::domain());
        chain
    }
}

impl ChainAccess for MockChain {
    fn channel_state(&self, id: ChannelId) -> BoxFuture<'_, Result<OnchainState, ChainFailure>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let s = self.channels.lock().get(&id).copied().unwrap_or_default();
        let fail = *self.fail_read.lock();
        Box::pin(async move {
            match fail {
                Some(reason) => Err(ChainFailure {
                    reason,
                    message: "rpc down".into(),
                }),
                None => Ok(s),
            }
        })
    }

    fn deposit<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        _auth: &'a Erc3009Authorization,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>> {
        Box::pin(async move {
            self.deposit_calls.fetch_add(1, Ordering::SeqCst);
            let gate = self.deposit_gate.lock().clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            if let Some(reason) = *self.fail_deposit.lock() {
                return Err(ChainFailure {
                    reason,
                    message: "deposit reverted".into(),
                });
            }
            let id = self.domain.lock().as_ref().unwrap().channel_id(config);
            let n = self.deposits.fetch_add(1, Ordering::SeqCst);
            let mut map = self.channels.lock();
            let s = map.entry(id).or_default();
            s.balance += amount;
            Ok(ChainOutcome {
                tx_hash: B256::repeat_byte(0xd0 + n as u8),
                amount,
                state: *s,
            })
        })
    }

    fn refund<'a>(
        &'a self,
        config: &'a ChannelConfig,
        amount: u128,
        claim: Option<&'a Claimable>,
    ) -> BoxFuture<'a, Result<ChainOutcome, ChainFailure>> {
        Box::pin(async move {
            let id = self.domain.lock().as_ref().unwrap().channel_id(config);
            self.refunds.fetch_add(1, Ordering::SeqCst);
            let gate = self.refund_gate.lock().clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            let mut map = self.channels.lock();
            let s = map.entry(id).or_default();
            if let Some(c) = claim {
                s.total_claimed = c.claim_total;
            }
            s.balance -= amount;
            s.refund_nonce += U256::from(1);
            Ok(ChainOutcome {
                tx_hash: B256::repeat_byte(0xef),
                amount,
                state: *s,
            })
        })
    }

    /// Like a payer address without wallet code on a real chain: never signed anything.
    fn is_valid_signature<'a>(
        &'a self,
        _wallet: Address,
        _digest: B256,
        _signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainFailure>> {
        Box::pin(async { Ok(false) })
    }
}

pub struct Fixture {
    pub engine: Engine<SledStore>,
    pub chain: Arc<MockChain>,
    pub app: Router,
    pub payer: PrivateKeySigner,
    pub handler_runs: Arc<AtomicUsize>,
    pub dir: tempfile::TempDir,
}

pub fn engine_config() -> EngineConfig {
    EngineConfig {
        network: Eip155Network(31337),
        pay_to: Address::repeat_byte(0x70),
        asset: Address::repeat_byte(0x5f),
        asset_name: "USDC".into(),
        asset_version: "2".into(),
        receiver_authorizer: Address::repeat_byte(0x3c),
        withdraw_delay: 900,
        max_timeout_seconds: 300,
        extra: Default::default(),
    }
}

#[derive(serde::Deserialize)]
struct ChargeQuery {
    charge: Option<u64>,
    status: Option<u16>,
}

impl Fixture {
    pub async fn new() -> Self {
        let chain = MockChain::shared();
        Self::over(chain.clone(), chain)
    }

    /// The default engine and a random payer over `access`: a wrapper of `chain` (from
    /// [`MockChain::shared`]), the double the payload builders fund.
    pub fn over(access: Arc<dyn ChainAccess>, chain: Arc<MockChain>) -> Self {
        Self::over_store(access, chain, Durability::Group)
    }

    /// [`Self::new`] with a store of another durability (the benches use `None` to leave
    /// the disk out of a paid request's time).
    pub fn with_durability(durability: Durability) -> Self {
        let chain = MockChain::shared();
        Self::over_store(chain.clone(), chain, durability)
    }

    fn over_store(
        access: Arc<dyn ChainAccess>,
        chain: Arc<MockChain>,
        durability: Durability,
    ) -> Self {
        let (config, domain) = (engine_config(), offchain::domain());
        Self::build(
            config,
            domain,
            access,
            chain,
            PrivateKeySigner::random(),
            durability,
        )
    }

    /// A fixture over any chain access (the anvil tests pass the real escrow client).
    pub fn with(
        config: EngineConfig,
        domain: EscrowDomain,
        access: Arc<dyn ChainAccess>,
        chain: Arc<MockChain>,
        payer: PrivateKeySigner,
    ) -> Self {
        Self::build(config, domain, access, chain, payer, Durability::Group)
    }

    fn build(
        config: EngineConfig,
        domain: EscrowDomain,
        access: Arc<dyn ChainAccess>,
        chain: Arc<MockChain>,
        payer: PrivateKeySigner,
        durability: Durability,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::with_durability(durability)).unwrap(),
        );
        let engine = Engine::new(config, Ledger::new(domain), store, Some(access)).unwrap();
        let handler_runs = Arc::new(AtomicUsize::new(0));
        let runs = handler_runs.clone();
        let paid = get(
            move |Extension(charge): Extension<Charge>, Query(q): Query<ChargeQuery>| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    if let Some(c) = q.charge {
                        charge.set(u128::from(c));
                    }
                    let status = StatusCode::from_u16(q.status.unwrap_or(200)).unwrap();
                    (status, format!("{{\"max\":\"{}\"}}", charge.max()))
                }
            },
        )
        .layer(PaymentLayer::fixed(engine.clone(), PRICE).with_description("test resource"));
        let dynamic = get(|| async { "dyn" }).layer(PaymentLayer::new(
            engine.clone(),
            Price::Dynamic(Arc::new(|req: &Request<Body>| {
                if req.uri().query().is_some_and(|q| q.contains("big")) {
                    5000
                } else {
                    500
                }
            })),
        ));
        let app = Router::new()
            .route("/paid", paid)
            .route("/dyn", dynamic)
            .route("/free", get(|| async { "free" }));
        Self {
            engine,
            chain,
            app,
            payer,
            handler_runs,
            dir,
        }
    }

    pub fn domain(&self) -> &EscrowDomain {
        self.engine.domain()
    }

    /// The channel config of `payer` with `salt`, as the client would build it.
    pub fn config(&self, salt: u8) -> ChannelConfig {
        let c = self.engine.config();
        ChannelConfig {
            payer: self.payer.address(),
            payerAuthorizer: self.payer.address(),
            receiver: c.pay_to,
            receiverAuthorizer: c.receiver_authorizer,
            token: c.asset,
            withdrawDelay: alloy::primitives::aliases::U40::from(c.withdraw_delay),
            salt: B256::repeat_byte(salt),
        }
    }

    pub fn id(&self, config: &ChannelConfig) -> ChannelId {
        self.domain().channel_id(config)
    }

    /// Puts a channel with `balance` on the mock chain (the server learns it on first use).
    pub fn fund(&self, config: &ChannelConfig, balance: u128) -> ChannelId {
        let id = self.id(config);
        self.chain.channels.lock().insert(
            id,
            OnchainState {
                balance,
                ..Default::default()
            },
        );
        id
    }

    pub fn voucher_json(&self, config: &ChannelConfig, max: u128) -> Value {
        let id = self.id(config);
        let sig = sign_voucher(&self.payer, self.domain(), id, max).unwrap();
        json!({"channelId": id.0, "maxClaimableAmount": max.to_string(),
               "signature": format!("0x{}", hex::encode(sig.as_bytes()))})
    }

    pub fn payload(&self, price: u128, payload: Value) -> Value {
        json!({"x402Version": 2, "accepted": self.engine.offer(price),
               "resource": {"url": "http://localhost/paid"}, "payload": payload})
    }

    pub fn voucher_payload(&self, config: &ChannelConfig, max: u128) -> Value {
        self.payload(
            PRICE,
            json!({"type": "voucher", "channelConfig": config_json(config),
                   "voucher": self.voucher_json(config, max)}),
        )
    }

    pub fn deposit_payload(&self, config: &ChannelConfig, max: u128, amount: u128) -> Value {
        // A fresh salt each time, as a client signs a new authorization per deposit (the
        // server refuses an authorization it already submitted).
        let auth = json!({"validAfter": "0", "validBefore": "99999999999",
                          "salt": B256::from(rand::random::<[u8; 32]>()), "signature": format!("0x{}", "11".repeat(65))});
        self.deposit_payload_with(config, max, amount, auth)
    }

    pub fn deposit_payload_with(
        &self,
        config: &ChannelConfig,
        max: u128,
        amount: u128,
        auth: Value,
    ) -> Value {
        self.payload(
            PRICE,
            json!({"type": "deposit", "channelConfig": config_json(config),
                   "voucher": self.voucher_json(config, max),
                   "deposit": {"amount": amount.to_string(),
                               "authorization": {"erc3009Authorization": auth}}}),
        )
    }

    pub fn refund_payload(&self, config: &ChannelConfig, max: u128, amount: Option<u128>) -> Value {
        let mut p = json!({"type": "refund", "channelConfig": config_json(config),
                           "voucher": self.voucher_json(config, max)});
        if let Some(a) = amount {
            p["amount"] = json!(a.to_string());
        }
        self.payload(PRICE, p)
    }

    /// The GET of `path` paying with `payload`, for a caller that drives the app itself
    /// ([`Self::send`] sends the same request).
    pub fn paid_request(&self, path: &str, payload: &Value) -> Request<Body> {
        Request::get(path)
            .header("host", "localhost")
            .header("PAYMENT-SIGNATURE", encode_header(payload))
            .body(Body::empty())
            .unwrap()
    }

    /// Sends a request with an optional raw `PAYMENT-SIGNATURE` value.
    pub async fn send_raw(&self, path: &str, header: Option<String>) -> Answer {
        let mut req = Request::get(path).header("host", "localhost");
        if let Some(h) = header {
            req = req.header("PAYMENT-SIGNATURE", h);
        }
        self.send_request(req).await
    }

    /// Sends a request built by the caller (with an empty body) and reads the answer.
    pub async fn send_request(&self, req: http::request::Builder) -> Answer {
        let res = self
            .app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn send(&self, path: &str, payload: &Value) -> Answer {
        self.send_raw(path, Some(encode_header(payload))).await
    }

    /// [`Self::send`], which must be served (200): a paid request that went through.
    pub async fn send_ok(&self, path: &str, payload: &Value) -> Answer {
        let a = self.send(path, payload).await;
        assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
        a
    }

    /// Ledger records plus store records, for before/after comparisons.
    pub async fn state(&self) -> (Vec<String>, Vec<String>) {
        let mut ledger: Vec<String> = self
            .engine
            .ledger()
            .records()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        ledger.sort();
        let mut stored: Vec<String> = self
            .engine
            .store()
            .load_all()
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{r:?}"))
            .collect();
        stored.sort();
        (ledger, stored)
    }
}

/// The chain double plus an ERC-1271 allow-list: a smart-wallet payer's signatures are
/// valid exactly when the wallet approved their digest; every wallet call is counted.
#[derive(Debug)]
pub struct WalletChain {
    pub inner: Arc<MockChain>,
    pub wallets: Mutex<AllowListErc1271>,
    pub calls: AtomicUsize,
}

impl WalletChain {
    pub fn new(inner: Arc<MockChain>) -> Self {
        Self {
            inner,
            wallets: Mutex::new(AllowListErc1271::new()),
            calls: AtomicUsize::new(0),
        }
    }

    /// `wallet` approves signatures over `digest` from now on.
    pub fn approve(&self, wallet: Address, digest: B256) {
        let mut w = self.wallets.lock();
        *w = w.clone().allow(wallet, digest);
    }
}

impl ChainAccess for WalletChain {
    fn channel_state(&self, id: ChannelId) -> BoxFuture<'_, Result<OnchainState, ChainFailure>> {
        self.inner.channel_state(id)
    }

    crate::chain_writes_to_inner!();

    fn is_valid_signature<'a>(
        &'a self,
        wallet: Address,
        digest: B256,
        signature: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, ChainFailure>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let checker = self.wallets.lock().clone();
        Box::pin(async move {
            checker
                .is_valid_signature(wallet, digest, signature)
                .await
                .map_err(|e| ChainFailure {
                    reason: Reason::RpcReadFailed,
                    message: e.to_string(),
                })
        })
    }
}

pub fn config_json(c: &ChannelConfig) -> Value {
    json!({"payer": c.payer, "payerAuthorizer": c.payerAuthorizer, "receiver": c.receiver,
           "receiverAuthorizer": c.receiverAuthorizer, "token": c.token,
           "withdrawDelay": c.withdrawDelay.to::<u64>(), "salt": c.salt})
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Value,
}

fn b64(v: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

impl Answer {
    /// Decoded `PAYMENT-REQUIRED`.
    pub fn required(&self) -> Value {
        b64(self.headers["payment-required"].to_str().unwrap())
    }
    /// Decoded `PAYMENT-RESPONSE`.
    pub fn response(&self) -> Value {
        b64(self.headers["payment-response"].to_str().unwrap())
    }
    pub fn settle(&self) -> SettleResponse {
        serde_json::from_value(self.response()).unwrap()
    }
    /// The reason code of a 402.
    pub fn reason(&self) -> String {
        self.required()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The `deposit` and `refund` of a [`ChainAccess`] wrapper, passed to its `inner` chain:
/// for the doubles that change only reads or signature checks.
#[macro_export]
macro_rules! chain_writes_to_inner {
    () => {
        fn deposit<'a>(
            &'a self,
            config: &'a ::x402_upto::typed_data::ChannelConfig,
            amount: u128,
            auth: &'a ::x402_upto::wire::Erc3009Authorization,
        ) -> ::x402_upto::engine::BoxFuture<
            'a,
            Result<::x402_upto::engine::ChainOutcome, ::x402_upto::engine::ChainFailure>,
        > {
            self.inner.deposit(config, amount, auth)
        }

        fn refund<'a>(
            &'a self,
            config: &'a ::x402_upto::typed_data::ChannelConfig,
            amount: u128,
            claim: Option<&'a ::x402_upto::ledger::Claimable>,
        ) -> ::x402_upto::engine::BoxFuture<
            'a,
            Result<::x402_upto::engine::ChainOutcome, ::x402_upto::engine::ChainFailure>,
        > {
            self.inner.refund(config, amount, claim)
        }
    };
}
