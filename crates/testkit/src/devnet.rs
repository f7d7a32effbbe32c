//! A local chain for tests and the demo: spawns anvil, deploys MockUSDC, the escrow and the
//! ERC-3009 deposit collector from the committed artifacts, and funds accounts.
//!
//! Anvil comes from `X402_UPTO_ANVIL`, else `<repo>/.tools/bin/anvil` (installed by
//! `bash scripts/tools.sh`), else `anvil` on `PATH`. A missing binary is an error that says
//! how to install it; nothing here silently skips.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alloy::contract::{CallBuilder, CallDecoder};
use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionReceipt;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::{RpcError, TransportErrorKind};
use alloy_primitives::aliases::U40;
use alloy_primitives::{Address, B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct};

use x402_upto::chain::bindings::{Erc3009DepositCollector, IUptoEscrow, MockUSDC, UptoEscrow};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::chain::tx::{TxPolicy, TxSender};
use x402_upto::typed_data::{
    ChannelConfig, ChannelId, EscrowDomain, ReceiveWithAuthorization, SigningError,
    erc3009_collector_data, erc3009_deposit_nonce, sign_digest, sign_receive_with_authorization,
    token_domain,
};

alloy::sol! {
    /// EIP-3009 `TransferWithAuthorization`: what an x402 `exact` payment signs.
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// Why the local chain could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DevnetError {
    /// No anvil binary was found.
    #[error("anvil not found (looked at {0}): run `bash scripts/tools.sh` or set X402_UPTO_ANVIL")]
    AnvilNotFound(String),
    /// anvil did not start.
    #[error("anvil did not start: {0}")]
    Spawn(String),
    /// A contract call or deployment failed.
    #[error("{what} failed")]
    Contract {
        /// What was attempted.
        what: &'static str,
        /// The alloy error (boxed: it is large and this path is cold).
        #[source]
        source: Box<alloy::contract::Error>,
    },
    /// An RPC call failed.
    #[error("rpc {what} failed")]
    Rpc {
        /// What was attempted.
        what: &'static str,
        /// The transport error.
        #[source]
        source: RpcError<TransportErrorKind>,
    },
    /// A transaction was mined but reverted.
    #[error("{0} reverted")]
    Reverted(&'static str),
    /// Signing failed.
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// Options for [`Devnet::start_with`].
#[derive(Clone, Debug)]
pub struct DevnetOptions {
    /// Funded accounts anvil creates (its default mnemonic).
    pub accounts: u32,
    /// Seconds between blocks; `None` mines each transaction at once.
    pub block_time: Option<u64>,
}

impl Default for DevnetOptions {
    fn default() -> Self {
        Self {
            accounts: 20,
            block_time: None,
        }
    }
}

/// A running anvil with the project's contracts deployed. Dropping it stops anvil.
#[derive(Debug)]
pub struct Devnet {
    /// Provider whose wallet is the deployer (account 0); also the token minter.
    pub provider: DynProvider,
    /// Chain id (31337).
    pub chain_id: u64,
    /// MockUSDC (6 decimals, EIP-712 domain `USDC`/`2`).
    pub token: Address,
    /// UptoEscrow.
    pub escrow: Address,
    /// Erc3009DepositCollector bound to `escrow`.
    pub collector: Address,
    keys: Vec<PrivateKeySigner>,
    /// Last field: fields drop in order, so the provider (and its block poller) goes before
    /// anvil is killed, and nothing polls a dead endpoint.
    anvil: AnvilInstance,
}

/// Token EIP-712 name and version of MockUSDC, as a 402 offer announces them in `extra`.
pub const TOKEN_NAME: &str = "USDC";
/// See [`TOKEN_NAME`].
pub const TOKEN_VERSION: &str = "2";

impl Devnet {
    /// Where anvil is looked for, in order.
    pub fn anvil_path() -> Result<PathBuf, DevnetError> {
        if let Some(p) = std::env::var_os("X402_UPTO_ANVIL") {
            return Ok(PathBuf::from(p));
        }
        let local = crate::workspace_root().join(".tools/bin/anvil");
        if local.exists() {
            return Ok(local);
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("anvil"))
                .find(|p| p.is_file())
        });
        on_path.ok_or_else(|| DevnetError::AnvilNotFound(local.display().to_string()))
    }

    /// Starts anvil with default options and deploys the contracts.
    pub async fn start() -> Result<Self, DevnetError> {
        Self::start_with(DevnetOptions::default()).await
    }

    /// Starts anvil and deploys MockUSDC, UptoEscrow and the ERC-3009 collector.
    pub async fn start_with(options: DevnetOptions) -> Result<Self, DevnetError> {
        let mut anvil = Anvil::new()
            .path(Self::anvil_path()?)
            .args(["--accounts", &options.accounts.to_string()]);
        if let Some(secs) = options.block_time {
            anvil = anvil.block_time(secs);
        }
        let anvil = anvil
            .try_spawn()
            .map_err(|e| DevnetError::Spawn(e.to_string()))?;
        let keys: Vec<PrivateKeySigner> = anvil
            .keys()
            .iter()
            .map(|k| PrivateKeySigner::from(k.clone()))
            .collect();
        let chain_id = anvil.chain_id();
        let deployer = keys
            .first()
            .cloned()
            .ok_or(DevnetError::Spawn("anvil has no accounts".into()))?;
        let provider = provider_for(&anvil.endpoint_url(), &deployer);

        let contract = |what| {
            move |source| DevnetError::Contract {
                what,
                source: Box::new(source),
            }
        };
        let token = *MockUSDC::deploy(provider.clone())
            .await
            .map_err(contract("deploy MockUSDC"))?
            .address();
        let escrow = *UptoEscrow::deploy(provider.clone())
            .await
            .map_err(contract("deploy UptoEscrow"))?
            .address();
        let collector = *Erc3009DepositCollector::deploy(provider.clone(), escrow)
            .await
            .map_err(contract("deploy Erc3009DepositCollector"))?
            .address();
        Ok(Self {
            anvil,
            provider,
            chain_id,
            token,
            escrow,
            collector,
            keys,
        })
    }

    /// JSON-RPC endpoint.
    pub fn endpoint_url(&self) -> reqwest::Url {
        self.anvil.endpoint_url()
    }

    /// Anvil's account `i` (0 is the deployer); `None` past the configured count.
    pub fn key(&self, i: usize) -> Option<PrivateKeySigner> {
        self.keys.get(i).cloned()
    }

    /// The escrow's EIP-712 domain.
    pub fn domain(&self) -> EscrowDomain {
        EscrowDomain::new(self.chain_id, self.escrow)
    }

    /// MockUSDC's EIP-712 domain (for ERC-3009 signatures).
    pub fn token_domain(&self) -> Eip712Domain {
        token_domain(TOKEN_NAME, TOKEN_VERSION, self.chain_id, self.token)
    }

    /// A provider that signs with `signer` (receipts polled every 10 ms).
    pub fn provider_for(&self, signer: &PrivateKeySigner) -> DynProvider {
        provider_for(&self.endpoint_url(), signer)
    }

    /// A transaction sender for `signer` with short, anvil-friendly timeouts.
    pub fn tx_sender(&self, signer: PrivateKeySigner) -> TxSender {
        let policy = TxPolicy {
            attempt_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
            ..TxPolicy::default()
        };
        TxSender::new(self.provider.clone(), signer, self.chain_id, policy)
    }

    /// The escrow client on this chain: transactions sent by `relayer` (through
    /// [`Devnet::tx_sender`]), claims and refunds signed by `authorizer`.
    pub fn escrow_client(
        &self,
        relayer: PrivateKeySigner,
        authorizer: Option<PrivateKeySigner>,
    ) -> EscrowClient {
        self.escrow_client_over(
            self.provider.clone(),
            Arc::new(self.tx_sender(relayer)),
            authorizer,
        )
    }

    /// [`Devnet::escrow_client`] over another provider and sender (a proxied or dead RPC, a
    /// sender with its own policy).
    pub fn escrow_client_over(
        &self,
        provider: DynProvider,
        sender: Arc<TxSender>,
        authorizer: Option<PrivateKeySigner>,
    ) -> EscrowClient {
        EscrowClient::new(
            provider,
            self.escrow,
            self.collector,
            sender,
            authorizer,
            self.domain(),
        )
    }

    /// Transactions `who` has sent (mined or pending).
    pub async fn nonce(&self, who: Address) -> u64 {
        self.provider
            .get_transaction_count(who)
            .await
            .expect("nonce")
    }

    /// Mints `amount` MockUSDC (6 decimals) to `to`.
    pub async fn mint(&self, to: Address, amount: u128) -> Result<(), DevnetError> {
        let usdc = MockUSDC::new(self.token, self.provider.clone());
        sent(usdc.mint(to, U256::from(amount)), "mint").await?;
        Ok(())
    }

    /// One x402 `exact`-style payment: a `transferWithAuthorization` of `value` MockUSDC from
    /// `payer` to `to` (EIP-3009, signed under the token's domain, unique by `nonce`),
    /// relayed by the deployer. Its receipt, which shows success.
    pub async fn exact_transfer(
        &self,
        payer: &PrivateKeySigner,
        to: Address,
        value: u128,
        nonce: B256,
    ) -> Result<TransactionReceipt, DevnetError> {
        let auth = TransferWithAuthorization {
            from: payer.address(),
            to,
            value: U256::from(value),
            validAfter: U256::ZERO,
            validBefore: U256::from(u64::MAX),
            nonce,
        };
        let sig = sign_digest(payer, &auth.eip712_signing_hash(&self.token_domain()))?;
        let usdc = MockUSDC::new(self.token, self.provider.clone());
        sent(
            usdc.transferWithAuthorization_0(
                auth.from,
                auth.to,
                auth.value,
                auth.validAfter,
                auth.validBefore,
                auth.nonce,
                sig.as_bytes().into(),
            ),
            "transferWithAuthorization",
        )
        .await
    }

    /// MockUSDC balance of `who`.
    pub async fn balance_of(&self, who: Address) -> Result<u128, DevnetError> {
        let usdc = MockUSDC::new(self.token, self.provider.clone());
        let b = usdc
            .balanceOf(who)
            .call()
            .await
            .map_err(|source| DevnetError::Contract {
                what: "balanceOf",
                source: Box::new(source),
            })?;
        Ok(u128::try_from(b).unwrap_or(u128::MAX))
    }

    /// A channel config on this devnet's token with a 900 s withdraw delay.
    pub fn channel_config(
        &self,
        payer: Address,
        payer_authorizer: Address,
        receiver: Address,
        receiver_authorizer: Address,
        salt: B256,
    ) -> ChannelConfig {
        ChannelConfig {
            payer,
            payerAuthorizer: payer_authorizer,
            receiver,
            receiverAuthorizer: receiver_authorizer,
            token: self.token,
            withdrawDelay: U40::from(900u64),
            salt,
        }
    }

    /// Opens (or tops up) a channel: `payer` signs an ERC-3009 `receiveWithAuthorization` to
    /// the collector and the deployer relays `deposit`. The payer needs the tokens already.
    pub async fn deposit(
        &self,
        payer: &PrivateKeySigner,
        config: &ChannelConfig,
        amount: u128,
        salt: B256,
    ) -> Result<ChannelId, DevnetError> {
        let id = self.domain().channel_id(config);
        let auth = ReceiveWithAuthorization {
            from: payer.address(),
            to: self.collector,
            value: U256::from(amount),
            validAfter: U256::ZERO,
            validBefore: U256::from(u64::MAX),
            nonce: erc3009_deposit_nonce(id, salt),
        };
        let sig = sign_receive_with_authorization(payer, &self.token_domain(), &auth)?;
        let data = erc3009_collector_data(U256::ZERO, U256::from(u64::MAX), salt, &sig.as_bytes());
        let escrow = UptoEscrow::new(self.escrow, self.provider.clone());
        sent(
            escrow.deposit(
                IUptoEscrow::ChannelConfig::from(config),
                amount,
                self.collector,
                data,
            ),
            "deposit",
        )
        .await?;
        Ok(id)
    }

    /// Moves chain time forward (then mines a block so it takes effect).
    pub async fn increase_time(&self, secs: u64) -> Result<(), DevnetError> {
        self.provider
            .raw_request::<_, serde_json::Value>("evm_increaseTime".into(), (secs,))
            .await
            .map_err(|source| DevnetError::Rpc {
                what: "evm_increaseTime",
                source,
            })?;
        self.mine().await
    }

    /// Mines one block.
    pub async fn mine(&self) -> Result<(), DevnetError> {
        self.provider
            .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
            .await
            .map(|_| ())
            .map_err(|source| DevnetError::Rpc {
                what: "evm_mine",
                source,
            })
    }

    /// Replaces the newest block with an empty one (`anvil_reorg` of depth 1): what a reorg
    /// does to the last transaction mined.
    pub async fn reorg_one_block(&self) -> Result<(), DevnetError> {
        self.provider
            .raw_request::<_, serde_json::Value>("anvil_reorg".into(), (1u64, Vec::<()>::new()))
            .await
            .map(|_| ())
            .map_err(|source| DevnetError::Rpc {
                what: "anvil_reorg",
                source,
            })
    }
}

fn provider_for(url: &reqwest::Url, signer: &PrivateKeySigner) -> DynProvider {
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(url.clone());
    // Anvil mines at once; alloy's default 250 ms receipt polling would dominate every call.
    provider
        .client()
        .set_poll_interval(Duration::from_millis(10));
    provider.erased()
}

/// Sends a contract call (`what`) and waits for its receipt, which must show success.
async fn sent<P: Provider, D: CallDecoder>(
    call: CallBuilder<P, D>,
    what: &'static str,
) -> Result<TransactionReceipt, DevnetError> {
    let receipt = call
        .send()
        .await
        .map_err(|source| DevnetError::Contract {
            what,
            source: Box::new(source),
        })?
        .get_receipt()
        .await
        .map_err(|e| DevnetError::Spawn(format!("{what} receipt: {e}")))?;
    if receipt.status() {
        Ok(receipt)
    } else {
        Err(DevnetError::Reverted(what))
    }
}

/// Sends a contract call and waits for its receipt, which must show success.
pub async fn mined<P: Provider, D: CallDecoder>(call: CallBuilder<P, D>) -> TransactionReceipt {
    let receipt = call
        .send()
        .await
        .expect("send")
        .get_receipt()
        .await
        .expect("receipt");
    assert!(receipt.status(), "reverted: {receipt:?}");
    receipt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deploys_funds_and_opens_a_channel() {
        let net = Devnet::start().await.unwrap();
        let payer = net.key(1).unwrap();
        net.mint(payer.address(), 1_000_000).await.unwrap();
        let config = net.channel_config(
            payer.address(),
            payer.address(),
            net.key(2).unwrap().address(),
            net.key(3).unwrap().address(),
            B256::repeat_byte(1),
        );
        let id = net
            .deposit(&payer, &config, 250_000, B256::repeat_byte(9))
            .await
            .unwrap();
        let escrow = UptoEscrow::new(net.escrow, net.provider.clone());
        let state = escrow.channels(id.0).call().await.unwrap();
        assert_eq!(state.balance, 250_000);
        assert_eq!(net.balance_of(payer.address()).await.unwrap(), 750_000);
        assert_eq!(net.balance_of(net.escrow).await.unwrap(), 250_000);
    }
}
