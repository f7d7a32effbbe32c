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
//! | [`clock`] | the one wall-clock helper ([`clock::unix_now`]) |
//! | [`ledger`] | channels in memory: reserve → commit → apply, voucher rules, chain hooks, claimable snapshot, freshness |
//! | [`store`] | durable records and the claim journal: the [`Store`] and [`store::JournalStore`] traits, [`SledStore`], group commit |
//! | [`reason`] | every x402 reason code as one `Copy` enum |
//! | [`error`] | the crate [`Error`] and `Result` |
//! | [`wire`] | x402 v2 JSON messages, the base64 header codec, `accepted` matching |
//! | [`chain`] | `sol!` bindings from `contracts/artifacts/`, [`chain::tx::TxSender`] (nonces, fees, replacement), `EscrowClient` |
//! | [`settlement`] | claim/sweep/refund scheduler over any [`store::SettlementStore`], chain watcher (confirmations, reorgs), channel loading |
//! | [`telemetry`] | metric names and their descriptions (the binary installs the exporter) |
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
//! # A paid route
//!
//! The server side is an [`Engine`] (the payment logic, over a [`Ledger`] in memory and a
//! [`Store`] on disk) wrapped around an axum route by [`PaymentLayer`]. The handler learns
//! its budget from the [`Charge`] extension and reports what the request actually cost;
//! the response leaves only once the voucher paying for it is durable.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use alloy_primitives::Address;
//! use axum::{Extension, Router, routing::get};
//! use x402_upto::wire::Eip155Network;
//! use x402_upto::{
//!     Charge, Durability, Engine, EngineConfig, EscrowDomain, Ledger, PaymentLayer, SledOptions,
//!     SledStore,
//! };
//!
//! async fn summarize(Extension(charge): Extension<Charge>) -> &'static str {
//!     charge.set(charge.max() / 4); // this request cost a quarter of its maximum
//!     "summary"
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let domain = EscrowDomain::new(8453, Address::repeat_byte(0xee)); // chain id, escrow
//! let ledger = Ledger::new(domain);
//! let store = Arc::new(SledStore::open(
//!     "./x402-state",
//!     SledOptions::with_durability(Durability::Group),
//! )?);
//! ledger.restore(x402_upto::store::Store::load_all(&*store).await?);
//! let config = EngineConfig {
//!     network: Eip155Network(8453),
//!     pay_to: Address::repeat_byte(0x01),
//!     asset: Address::repeat_byte(0x02),
//!     asset_name: "USD Coin".into(),
//!     asset_version: "2".into(),
//!     receiver_authorizer: Address::repeat_byte(0x03),
//!     withdraw_delay: 86_400,
//!     max_timeout_seconds: 300,
//!     extra: Default::default(),
//! };
//! // No chain access: only channels already in the store are served. A real server
//! // passes an `EscrowClient` (deposits, unknown channels) and runs `settlement::Settlement`
//! // to claim what was charged.
//! let engine = Engine::new(config, ledger, store, None)?;
//!
//! // Each request may cost up to 1000 token units (the voucher's increment).
//! let app = Router::new().route(
//!     "/summarize",
//!     get(summarize).layer(PaymentLayer::fixed(engine, 1_000)),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! The paying side is [`PayingClient`] (configured by [`ClientConfig`]); a server that
//! settles for others mounts [`Facilitator::router`].

pub mod chain;
pub mod client;
pub mod clock;
pub mod engine;
pub mod error;
pub mod facilitator;
pub mod ledger;
pub mod mcp;
pub mod reason;
pub mod server;
pub mod settlement;
pub mod store;
pub mod telemetry;
pub mod typed_data;
pub mod verify;
pub mod wire;

// What a user needs first: the product (layer, engine, client, facilitator) and what it
// is built from.
pub use client::{ClientConfig, PayingClient};
pub use engine::{Engine, EngineConfig};
pub use error::{Error, Result};
pub use facilitator::Facilitator;
pub use reason::Reason;
pub use server::{ActualCharge, Charge, PaymentLayer};
pub use store::{Durability, SledOptions, SledStore, Store};
pub use typed_data::{ChannelConfig, ChannelId, EscrowDomain};

// The ledger's main types, kept at the root for existing callers.
pub use ledger::{
    ChannelRecord, ChannelSnapshot, Ledger, OnchainState, Receipt, Reject, Reservation,
};
