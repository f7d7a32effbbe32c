//! Escrow reads: the channel mirror (one `multicall`, so one block), claimed totals, a
//! receiver's unsettled amount, and ERC-1271 signature checks.

use alloy::network::TransactionBuilder;
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::transports::RpcError;
use alloy_primitives::{Address, B256, Bytes};
use alloy_sol_types::SolCall;

use super::{ChainError, EscrowClient};
use crate::chain::bindings::UptoEscrow;
use crate::ledger::OnchainState;
use crate::typed_data::ChannelId;
use crate::verify::{Erc1271Checker, Erc1271Error};

alloy::sol! {
    /// ERC-1271 (`isValidSignature` returns `0x1626ba7e` for a valid signature).
    interface IErc1271 {
        function isValidSignature(bytes32 hash, bytes signature) external view returns (bytes4);
    }
}

/// The ERC-1271 magic value.
const ERC1271_MAGIC: [u8; 4] = [0x16, 0x26, 0xba, 0x7e];

impl EscrowClient {
    /// `balance`, `totalClaimed`, `withdrawRequestedAt` and `refundNonce` of `id`, read in
    /// one `eth_call` (so from one block) at the latest block.
    pub async fn channel_state(&self, id: ChannelId) -> Result<OnchainState, ChainError> {
        self.channel_state_at(id, None).await
    }

    /// Like [`Self::channel_state`], at block `block` (`None`: latest).
    pub async fn channel_state_at(
        &self,
        id: ChannelId,
        block: Option<u64>,
    ) -> Result<OnchainState, ChainError> {
        let calls = vec![
            Bytes::from(UptoEscrow::channelsCall { channelId: id.0 }.abi_encode()),
            Bytes::from(UptoEscrow::pendingWithdrawalsCall { channelId: id.0 }.abi_encode()),
            Bytes::from(UptoEscrow::refundNonceCall { channelId: id.0 }.abi_encode()),
        ];
        let parts = self.multicall(calls, block, "channel_state").await?;
        let decode = |source| ChainError::Decode {
            call: "channel_state",
            source,
        };
        let [channels, pending, nonce] = parts.as_slice() else {
            return Err(decode(alloy_sol_types::Error::Other(
                "multicall returned the wrong number of results".into(),
            )));
        };
        let channels = UptoEscrow::channelsCall::abi_decode_returns(channels).map_err(decode)?;
        let pending =
            UptoEscrow::pendingWithdrawalsCall::abi_decode_returns(pending).map_err(decode)?;
        let nonce = UptoEscrow::refundNonceCall::abi_decode_returns(nonce).map_err(decode)?;
        Ok(OnchainState {
            balance: channels.balance,
            total_claimed: channels.totalClaimed,
            withdraw_requested_at: pending.initiatedAt.to::<u64>(),
            refund_nonce: nonce,
        })
    }

    /// On-chain `totalClaimed` of every channel in `ids`, in order, read in one `eth_call`
    /// (the escrow's `multicall`) at the latest block. The claim scheduler reads it right
    /// before sending a batch, so a row that would raise nothing costs no gas.
    pub async fn totals_claimed(&self, ids: &[ChannelId]) -> Result<Vec<u128>, ChainError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let calls = ids
            .iter()
            .map(|id| Bytes::from(UptoEscrow::channelsCall { channelId: id.0 }.abi_encode()))
            .collect();
        let parts = self.multicall(calls, None, "totals_claimed").await?;
        parts
            .iter()
            .map(|p| {
                UptoEscrow::channelsCall::abi_decode_returns(p)
                    .map(|c| c.totalClaimed)
                    .map_err(|source| ChainError::Decode {
                        call: "totals_claimed",
                        source,
                    })
            })
            .collect()
    }

    /// The results of `calls`, run in one `eth_call` of the escrow's own `multicall` (so at
    /// one block: `block`, or the latest), one per call; `call` names the read in errors.
    async fn multicall(
        &self,
        calls: Vec<Bytes>,
        block: Option<u64>,
        call: &'static str,
    ) -> Result<Vec<Bytes>, ChainError> {
        let want = calls.len();
        let tx = TransactionRequest::default()
            .with_to(self.escrow)
            .with_input(UptoEscrow::multicallCall { data: calls }.abi_encode());
        let pending = self.provider.call(tx);
        let raw = match block {
            Some(n) => pending.block(n.into()).await,
            None => pending.await,
        }
        .map_err(|source| ChainError::Read { call, source })?;
        let decode = |source| ChainError::Decode { call, source };
        let parts = UptoEscrow::multicallCall::abi_decode_returns(&raw).map_err(decode)?;
        if parts.len() != want {
            return Err(decode(alloy_sol_types::Error::Other(
                "multicall returned the wrong number of results".into(),
            )));
        }
        Ok(parts)
    }

    /// Claimed but not yet swept for `(receiver, token)`.
    pub async fn unsettled(&self, receiver: Address, token: Address) -> Result<u128, ChainError> {
        let (claimed, settled) = self.receiver_totals(receiver, token).await?;
        Ok(claimed.saturating_sub(settled))
    }

    /// `receivers(receiver, token)`: everything ever claimed for the receiver in `token`, and
    /// how much of it was swept to it, as `(claimed, settled)`.
    pub async fn receiver_totals(
        &self,
        receiver: Address,
        token: Address,
    ) -> Result<(u128, u128), ChainError> {
        let totals = self
            .read(UptoEscrow::receiversCall { receiver, token }, "receivers")
            .await?;
        Ok((totals.totalClaimed, totals.totalSettled))
    }
}

/// ERC-1271 check through `eth_call`. A revert or a non-magic answer (including a wallet
/// with no code) is "not signed"; only a transport failure is an error.
impl Erc1271Checker for EscrowClient {
    async fn is_valid_signature(
        &self,
        wallet: Address,
        digest: B256,
        signature: &[u8],
    ) -> Result<bool, Erc1271Error> {
        let call = IErc1271::isValidSignatureCall {
            hash: digest,
            signature: Bytes::copy_from_slice(signature),
        };
        let tx = TransactionRequest::default()
            .with_to(wallet)
            .with_input(call.abi_encode());
        match self.provider.call(tx).await {
            Ok(raw) => Ok(raw.len() >= 4 && raw[..4] == ERC1271_MAGIC),
            Err(RpcError::ErrorResp(resp)) if resp.as_revert_data().is_some() || resp.code == 3 => {
                Ok(false)
            }
            Err(e) => {
                metrics::counter!(crate::telemetry::RPC_ERRORS, "call" => "isValidSignature")
                    .increment(1);
                Err(Erc1271Error {
                    wallet,
                    source: Box::new(e),
                })
            }
        }
    }
}
