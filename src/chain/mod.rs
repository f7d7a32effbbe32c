//! Chain access: the escrow, collector and test-token bindings generated from the Foundry
//! artifacts in `contracts/artifacts/`, [`tx::TxSender`] for every transaction, and
//! [`escrow::EscrowClient`] for every escrow read and write (and the alloy-provider
//! `Erc1271Checker`).

pub mod bindings;
pub mod escrow;
pub mod tx;
