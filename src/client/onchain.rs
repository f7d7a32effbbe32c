//! What the client does on chain itself: the cold start (reading a channel it has no
//! state for from the escrow) and the payer's timed withdrawal.

use alloy::primitives::aliases::U40;
use alloy_primitives::B256;

use super::{ClientError, PayingClient, Target};
use crate::typed_data::{ChannelConfig, ChannelId};

impl PayingClient {
    /// The payer's trustless exit, no server involved: `initiateWithdraw` of the unspent
    /// balance (`finalize == false`), or `finalizeWithdraw` once `withdrawDelay` has passed.
    /// The payer pays the gas. Returns the mined transaction.
    pub async fn withdraw(
        &self,
        rpc: &str,
        channel: ChannelId,
        finalize: bool,
    ) -> Result<B256, ClientError> {
        use alloy::network::{EthereumWallet, TransactionBuilder as _};
        use alloy::providers::{Provider as _, ProviderBuilder};
        use alloy::rpc::types::TransactionRequest;
        use alloy_sol_types::SolCall as _;

        use crate::chain::bindings::UptoEscrow;

        let state = self
            .channels()
            .into_iter()
            .find(|s| s.channel_id == channel)
            .ok_or(ClientError::NoChannel)?;
        let chain_id = state
            .network
            .parse::<crate::wire::Eip155Network>()
            .map_err(|()| ClientError::NoOffer(format!("network {}", state.network)))?
            .chain_id();
        let url: reqwest::Url = rpc
            .parse()
            .map_err(|e| ClientError::NoOffer(format!("rpc url: {e}")))?;
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(self.config.payer.clone()))
            .connect_http(url)
            .erased();
        let sender = crate::chain::tx::TxSender::new(
            provider,
            self.config.payer.clone(),
            chain_id,
            crate::chain::tx::TxPolicy::default(),
        );
        let config = ChannelConfig {
            payer: state.config.payer,
            payerAuthorizer: state.config.payer_authorizer,
            receiver: state.config.receiver,
            receiverAuthorizer: state.config.receiver_authorizer,
            token: state.config.token,
            withdrawDelay: U40::saturating_from(state.config.withdraw_delay),
            salt: state.config.salt,
        };
        let (input, what) = if finalize {
            let call = UptoEscrow::finalizeWithdrawCall {
                config: (&config).into(),
            };
            (call.abi_encode(), "finalizeWithdraw")
        } else {
            // Only what we did not spend: the rest is owed to the server.
            let amount = state.balance.saturating_sub(state.charged);
            let call = UptoEscrow::initiateWithdrawCall {
                config: (&config).into(),
                amount,
            };
            (call.abi_encode(), "initiateWithdraw")
        };
        let tx = TransactionRequest::default()
            .with_to(self.config.escrow)
            .with_input(input);
        let sent = sender
            .send(tx, what)
            .await
            .map_err(|source| ClientError::Chain {
                what,
                source: Box::new(source),
            })?;
        Ok(sent.hash)
    }

    /// The spec's client cold start, when an RPC URL is configured: reads `t`'s channel from
    /// the escrow and bases the next voucher on its on-chain `totalClaimed` (only a claim
    /// carrying our own voucher signature can have raised it, so it is safe to adopt).
    /// Without `force`, only a channel with no local state is read (one read per new
    /// channel; an empty channel stays unknown). With `force`, the local state is raised to
    /// the chain's if the chain is ahead. Returns whether the local state changed.
    pub(crate) async fn cold_start(&self, t: &Target, force: bool) -> Result<bool, ClientError> {
        let Some(rpc) = self.config.rpc.as_deref() else {
            return Ok(false);
        };
        let known = self.state(t)?;
        if known.is_some() && !force {
            return Ok(false);
        }
        let (balance, total_claimed) = self.read_channel(rpc, t).await?;
        let mut state = known.unwrap_or_else(|| self.fresh(t));
        if balance == 0 && state.balance == 0 {
            // No channel on chain: a first deposit opens it.
            return Ok(false);
        }
        let before = state.clone();
        state.charged = state.charged.max(total_claimed);
        state.signed_max = state.signed_max.max(total_claimed);
        state.balance = balance;
        // What is in the channel counts against the spend limit (we may have deposited it
        // from another machine).
        state.deposited = state.deposited.max(balance);
        let moved = state.charged != before.charged;
        tracing::info!(channel = %t.id, balance, total_claimed, "channel read from chain");
        self.store(state)?;
        Ok(moved || before.balance != balance)
    }

    /// `(balance, totalClaimed)` of `t`'s channel, read from the escrow through `rpc` after
    /// checking that the endpoint serves the offer's chain.
    pub(super) async fn read_channel(
        &self,
        rpc: &str,
        t: &Target,
    ) -> Result<(u128, u128), ClientError> {
        use alloy::network::TransactionBuilder as _;
        use alloy::providers::{Provider as _, ProviderBuilder};
        use alloy::rpc::types::TransactionRequest;
        use alloy_sol_types::SolCall as _;

        use crate::chain::bindings::UptoEscrow;

        let fail = |what: &str, e: &dyn std::fmt::Display| {
            ClientError::ColdStart(format!("{what}: {e}").chars().take(300).collect())
        };
        let url: reqwest::Url = rpc.parse().map_err(|e| fail("rpc url", &e))?;
        let provider = ProviderBuilder::new().connect_http(url);
        let chain_id = provider
            .get_chain_id()
            .await
            .map_err(|e| fail("eth_chainId", &e))?;
        if chain_id != t.domain.chain_id() {
            return Err(ClientError::ColdStart(format!(
                "the rpc serves chain {chain_id}, the offer is for chain {}",
                t.domain.chain_id()
            )));
        }
        let tx = TransactionRequest::default()
            .with_to(self.config.escrow)
            .with_input(UptoEscrow::channelsCall { channelId: t.id.0 }.abi_encode());
        let raw = provider
            .call(tx)
            .await
            .map_err(|e| fail("channels()", &e))?;
        let ch = UptoEscrow::channelsCall::abi_decode_returns(&raw)
            .map_err(|e| fail("channels() returned", &e))?;
        Ok((ch.balance, ch.totalClaimed))
    }
}
