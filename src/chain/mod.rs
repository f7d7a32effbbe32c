//! Chain access. For now only the escrow, collector and test-token bindings generated from the
//! Foundry artifacts in `contracts/artifacts/`; reading channel state and sending claims come
//! with the chain module (as does the alloy-provider `Erc1271Checker`).

pub mod bindings;
pub mod tx;
