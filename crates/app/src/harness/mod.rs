//! Processes that the crash and fault tests start and kill (`x402-upto internal …`). Each
//! prints a line per acknowledged (durable) commit, so a test can check what survived.

pub mod settle_load;
pub mod store_load;
