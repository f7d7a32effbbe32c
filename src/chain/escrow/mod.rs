//! [`EscrowClient`]: every read and write the server makes against the escrow.
//!
//! Reads go straight through the provider; every write goes through the shared
//! [`TxSender`] of the relaying key (one nonce sequence per key). Claims and refunds are
//! authorised by the receiver-authorizer key held here: the client signs the `ClaimBatch`
//! or `Refund` EIP-712 message and anyone (our relayer) submits it.
//!
//! The three channel reads (`channels`, `pendingWithdrawals`, `refundNonce`) are bundled in
//! one `eth_call` of the escrow's own `multicall`, so the mirror is read at a single block.
//!
//! Reads are in `reads.rs`, deposits and their confirmations in `deposits.rs`, claims and
//! the settle sweep in `claims.rs`, refunds in `refunds.rs`, failures in `error.rs`.

mod claims;
mod deposits;
mod error;
mod reads;
mod refunds;

pub use claims::{ClaimOutcome, SettleOutcome, claimed_events};
pub use deposits::{DepositConfirmations, DepositOutcome, Erc3009Deposit};
pub use error::{ChainError, Op};
pub use refunds::RefundOutcome;

use std::sync::Arc;

use alloy::network::TransactionBuilder;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256};
use alloy_sol_types::{SolCall, SolEvent};

use crate::chain::tx::TxSender;
use crate::typed_data::EscrowDomain;

/// Client of one escrow deployment.
#[derive(Clone, Debug)]
pub struct EscrowClient {
    provider: DynProvider,
    escrow: Address,
    collector: Address,
    sender: Arc<TxSender>,
    receiver_authorizer: Option<PrivateKeySigner>,
    domain: EscrowDomain,
    deposit_confirmations: DepositConfirmations,
}

impl EscrowClient {
    /// A client for `escrow` (deposits through `collector`), sending with `sender` and
    /// signing claims and refunds with `receiver_authorizer` (if this server holds it).
    pub fn new(
        provider: DynProvider,
        escrow: Address,
        collector: Address,
        sender: Arc<TxSender>,
        receiver_authorizer: Option<PrivateKeySigner>,
        domain: EscrowDomain,
    ) -> Self {
        Self {
            provider,
            escrow,
            collector,
            sender,
            receiver_authorizer,
            domain,
            deposit_confirmations: DepositConfirmations::default(),
        }
    }

    /// Deposits wait for `c` before they are credited (default: none).
    #[must_use]
    pub fn with_deposit_confirmations(mut self, c: DepositConfirmations) -> Self {
        self.deposit_confirmations = c;
        self
    }

    /// The deposit confirmation policy.
    pub const fn deposit_confirmations(&self) -> DepositConfirmations {
        self.deposit_confirmations
    }

    /// The escrow address.
    pub const fn escrow(&self) -> Address {
        self.escrow
    }

    /// The deposit collector address.
    pub const fn collector(&self) -> Address {
        self.collector
    }

    /// The escrow's EIP-712 domain.
    pub const fn domain(&self) -> &EscrowDomain {
        &self.domain
    }

    /// The read provider.
    pub const fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The address claims and refunds are authorised by, if this client can sign them.
    pub fn receiver_authorizer(&self) -> Option<Address> {
        self.receiver_authorizer.as_ref().map(|s| s.address())
    }

    fn signer_for(&self, expected: Address) -> Result<&PrivateKeySigner, ChainError> {
        match &self.receiver_authorizer {
            Some(s) if s.address() == expected => Ok(s),
            other => Err(ChainError::AuthorizerMismatch {
                expected,
                ours: other.as_ref().map(|s| s.address()),
            }),
        }
    }

    async fn send(
        &self,
        op: Op,
        input: Vec<u8>,
        label: &str,
    ) -> Result<(B256, TransactionReceipt), ChainError> {
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(input);
        match self.sender.send(tx, label).await {
            Ok(sent) => Ok((sent.hash, sent.receipt)),
            Err(source) => {
                metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => label.to_owned())
                    .increment(1);
                Err(ChainError::Tx {
                    op,
                    source: Box::new(source),
                })
            }
        }
    }

    /// The `E` events the escrow itself emitted in `receipt` (another contract in the same
    /// transaction may emit an event of the same signature).
    fn events<'r, E: SolEvent + 'r>(
        &self,
        receipt: &'r TransactionReceipt,
    ) -> impl Iterator<Item = E> + 'r {
        let escrow = self.escrow;
        receipt
            .inner
            .logs()
            .iter()
            .filter(move |log| log.address() == escrow)
            .filter_map(|log| E::decode_log_data(log.data()).ok())
    }

    async fn read<C: SolCall>(&self, call: C, name: &'static str) -> Result<C::Return, ChainError> {
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(call.abi_encode());
        let raw = self.provider.call(tx).await.map_err(|source| {
            metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => name).increment(1);
            ChainError::Read { call: name, source }
        })?;
        C::abi_decode_returns(&raw).map_err(|source| ChainError::Decode { call: name, source })
    }
}
