//! Streams: metered responses, checkpoints and renewals (in process and on anvil). One
//! binary, one module per feature.

mod metered;
mod renewal;
mod server;
