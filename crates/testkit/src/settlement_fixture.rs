//! The settlement tests' rig on a [`Devnet`]: the parties of a channel, the escrow client the
//! relayer sends with, a ledger and a durable store.

use std::sync::Arc;

use alloy::signers::local::PrivateKeySigner;
use alloy_primitives::{Address, B256};
use x402_upto::chain::escrow::EscrowClient;
use x402_upto::typed_data::{ChannelConfig, ChannelId};
use x402_upto::verify::SignedVoucher;
use x402_upto::{Durability, Ledger, SledOptions, SledStore};

use crate::devnet::Devnet;
use crate::offchain::signed_voucher;

/// Keys: payer anvil:1 (also its own payer authorizer), receiver anvil:2, receiver authorizer
/// anvil:3, relayer anvil:5. The store is sled with group commit in a temp dir.
pub struct SettlementFixture {
    pub net: Devnet,
    pub client: Arc<EscrowClient>,
    pub payer: PrivateKeySigner,
    pub receiver: Address,
    pub authorizer: PrivateKeySigner,
    /// The key that pays every transaction the client sends.
    pub relayer: Address,
    pub ledger: Ledger,
    pub store: Arc<SledStore>,
    pub dir: tempfile::TempDir,
}

impl SettlementFixture {
    /// The rig with `minted` tokens minted to the payer.
    pub async fn start(minted: u128) -> Self {
        let net = Devnet::start().await.expect("devnet");
        let payer = net.key(1).expect("key");
        let receiver = net.key(2).expect("key").address();
        let authorizer = net.key(3).expect("key");
        let relayer = net.key(5).expect("key");
        net.mint(payer.address(), minted).await.expect("mint");
        let client = Arc::new(net.escrow_client(relayer.clone(), Some(authorizer.clone())));
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            SledStore::open(dir.path(), SledOptions::with_durability(Durability::Group))
                .expect("store"),
        );
        let ledger = Ledger::new(net.domain());
        Self {
            net,
            client,
            payer,
            receiver,
            authorizer,
            relayer: relayer.address(),
            ledger,
            store,
            dir,
        }
    }

    /// The payer's channel with `salt` (as a byte repeated).
    pub fn config(&self, salt: u8) -> ChannelConfig {
        self.net.channel_config(
            self.payer.address(),
            self.payer.address(),
            self.receiver,
            self.authorizer.address(),
            B256::repeat_byte(salt),
        )
    }

    /// Deposits `amount` into [`SettlementFixture::config`]`(salt)` on chain.
    pub async fn deposit(&self, salt: u8, amount: u128) -> ChannelId {
        self.net
            .deposit(
                &self.payer,
                &self.config(salt),
                amount,
                B256::repeat_byte(salt),
            )
            .await
            .expect("deposit")
    }

    /// Deposits, then mirrors the channel's on-chain state into the ledger as seen at `at`.
    pub async fn open(&self, salt: u8, amount: u128, at: u64) -> ChannelId {
        let id = self.deposit(salt, amount).await;
        let state = self.client.channel_state(id).await.expect("read");
        self.ledger.upsert_from_chain(self.config(salt), state, at);
        id
    }

    /// The payer's voucher for `max` on channel `id`.
    pub fn voucher(&self, id: ChannelId, max: u128) -> SignedVoucher {
        signed_voucher(&self.payer, self.ledger.domain(), id, max)
    }

    /// `totalClaimed` of channel `id` on chain.
    pub async fn total_claimed(&self, id: ChannelId) -> u128 {
        self.client
            .channel_state(id)
            .await
            .expect("read")
            .total_claimed
    }

    /// Transactions the relayer has sent (mined or pending).
    pub async fn relayer_nonce(&self) -> u64 {
        self.net.nonce(self.relayer).await
    }

    /// The payer's token balance.
    pub async fn payer_balance(&self) -> u128 {
        self.net
            .balance_of(self.payer.address())
            .await
            .expect("payer balance")
    }
}
