//! `sol!` bindings generated from the committed Foundry artifacts (`abi` + `bytecode`), so the
//! Rust side calls exactly the ABI the contracts engineer ships, and tests can deploy them.
//! Struct types come out under `IUptoEscrow::…` (the interface that declares them); they are
//! ABI twins of, but distinct Rust types from, [`crate::typed_data`]'s EIP-712 structs, so
//! conversions live here.

#![allow(missing_docs, clippy::too_many_arguments)]

use crate::typed_data;

alloy::sol!(
    #[sol(rpc, all_derives)]
    UptoEscrow,
    "contracts/artifacts/UptoEscrow.json"
);

alloy::sol!(
    #[sol(rpc, all_derives)]
    Erc3009DepositCollector,
    "contracts/artifacts/Erc3009DepositCollector.json"
);

alloy::sol!(
    #[sol(rpc, all_derives)]
    MockUSDC,
    "contracts/artifacts/MockUSDC.json"
);

impl From<&typed_data::ChannelConfig> for IUptoEscrow::ChannelConfig {
    fn from(c: &typed_data::ChannelConfig) -> Self {
        Self {
            payer: c.payer,
            payerAuthorizer: c.payerAuthorizer,
            receiver: c.receiver,
            receiverAuthorizer: c.receiverAuthorizer,
            token: c.token,
            withdrawDelay: c.withdrawDelay,
            salt: c.salt,
        }
    }
}

impl From<&crate::ledger::Claimable> for IUptoEscrow::VoucherClaim {
    /// The claim row for a claimable channel: `totalClaimed` is the charged amount.
    fn from(c: &crate::ledger::Claimable) -> Self {
        Self {
            voucher: IUptoEscrow::Voucher {
                channel: (&c.config).into(),
                maxClaimableAmount: c.max_claimable,
            },
            signature: c.signature.clone(),
            totalClaimed: c.claim_total,
        }
    }
}
