//! x402-upto: a settlement engine for x402 v2 `batch-settlement` on EVM.
//!
//! A client deposits into an escrow channel once, then signs a cumulative EIP-712 voucher
//! with every request. The server checks each voucher in memory (one ECDSA recovery, no
//! RPC), charges the actual cost up to the signed per-request maximum, makes the latest
//! voucher durable before answering, and later claims many channels in one transaction.
//!
//! # Layout
//!
//! | module | holds |
//! |---|---|
//! | [`typed_data`] | `sol!` EIP-712 structs, [`EscrowDomain`] with a cached separator, signing helpers |
//! | [`verify`] | strict ECDSA parsing and recovery, [`verify::Erc1271Checker`] for smart wallets |
//! | [`ledger`] | channels in memory: reserve → commit → apply, chain hooks, claimable snapshot |
//! | [`store`] | durable records: the [`Store`] trait, [`SledStore`], group commit |
//! | [`reason`] | every x402 reason code as one `Copy` enum |
//! | [`error`] | the crate [`Error`] and `Result` |
//! | [`wire`] | x402 v2 JSON messages, the base64 header codec, `accepted` matching |
//! | [`chain`] | `sol!` bindings from `contracts/artifacts/`, [`chain::tx::TxSender`] (nonces, fees, replacement), `EscrowClient` |
//! | [`settlement`] | claim journal, claim/sweep/refund scheduler, chain watcher (confirmations, reorgs), channel loading |
//! | [`telemetry`] | metric names, the Prometheus exporter, the tracing subscriber |
//! | [`engine`] | the payment logic of a request, independent of HTTP: offer, checks, settle, deposits, refunds |
//! | [`server`] | the axum/tower `PaymentLayer` over the engine, and the `Charge` handle |
//! | [`client`] | the paying reqwest client: deposits, vouchers, response checks, corrective resync, refunds |
//! | [`facilitator`] | `POST /verify`, `POST /settle`, `GET /supported` for this scheme (axum router) |
//!
//! Dependencies point one way: `wire, typed_data → verify → ledger → store → chain → settlement →
//! engine → server, facilitator, client`. The `x402-upto` binary (command line, `serve`, demo,
//! bench, crash harnesses) is the `x402-upto-app` crate; the anvil rig and test fixtures are
//! `x402-upto-testkit`.
//!
//! # A paid request
//!
//! ```
//! # async fn demo() -> x402_upto::Result<()> {
//! use x402_upto::{Ledger, SledStore, SledOptions, Durability, OnchainState};
//! use x402_upto::typed_data::{ChannelConfig, EscrowDomain, sign_voucher};
//! use x402_upto::verify::SignedVoucher;
//! use alloy::signers::local::PrivateKeySigner;
//! use alloy_primitives::{Address, Bytes};
//!
//! let domain = EscrowDomain::new(31337, Address::repeat_byte(0xee));
//! let ledger = Ledger::new(domain.clone());
//! let dir = tempfile::tempdir().map_err(|e| x402_upto::store::StoreError::Io { path: ".".into(), source: e })?;
//! let store = SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))?;
//!
//! // A channel seen on chain with 1000 deposited.
//! let payer = PrivateKeySigner::random();
//! let config = ChannelConfig { payer: payer.address(), payerAuthorizer: payer.address(), ..Default::default() };
//! let onchain = OnchainState { balance: 1000, ..Default::default() };
//! let (id, _) = ledger.upsert_from_chain(config, onchain, 0);
//!
//! // Request priced "up to 100": the voucher must be charged (0) + 100.
//! let sig = sign_voucher(&payer, &domain, id, 100)?;
//! let voucher = SignedVoucher { channel_id: id, max_claimable: 100, signature: Bytes::from(sig.as_bytes()) };
//! let reservation = ledger.verify_and_reserve(voucher, 100)?;
//! // ... the handler runs and costs 40 ...
//! let staged = reservation.commit(40, 1).map_err(|refused| refused.reject)?;
//! let receipt = x402_upto::store::persist(&store, staged).await?;
//! assert_eq!(receipt.snapshot.charged, 40);
//! # Ok(()) }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

pub mod chain;
pub mod client;
pub mod clock;
pub mod engine;
pub mod error;
pub mod facilitator;
pub mod ledger;
pub mod reason;
pub mod server;
pub mod settlement;
pub mod store;
pub mod telemetry;
pub mod typed_data;
pub mod verify;
pub mod wire;

pub use error::{Error, Result};
pub use ledger::{
    ChannelRecord, ChannelSnapshot, Ledger, OnchainState, Receipt, Reject, Reservation,
};
pub use reason::Reason;
pub use store::{Durability, SledOptions, SledStore, Store};
pub use typed_data::{ChannelConfig, ChannelId, EscrowDomain};
