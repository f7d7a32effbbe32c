//! Settlement on anvil: the escrow client, transactions, claims, the scheduler, the watcher,
//! refunds, faults (RPC outage, withdrawal while down) and a load run. One binary, one module
//! per feature.

mod anvil_claim;
mod chain_tx;
mod e2e_load;
mod escrow;
mod fault_rpc;
mod fault_withdrawal;
mod refunds;
mod scheduler;
mod watcher;
