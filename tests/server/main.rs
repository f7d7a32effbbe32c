//! The server layer over the engine: payments, refusals, cold reads, ERC-1271, the facilitator
//! (on the chain double and on anvil). One binary, one module per feature.

mod anvil;
mod blocked;
mod cold_reads;
mod erc1271;
mod erc1271_anvil;
mod facilitator;
mod facilitator_refund;
mod freshness;
mod layer;
mod malformed;
mod mcp;
mod min_deposit;
