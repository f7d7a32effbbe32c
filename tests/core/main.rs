//! Integration tests of the core (no HTTP, no chain): one binary, one module per feature.

mod helpers;
mod ledger_flow;
mod model;
mod recovery;
mod store;
mod store_postgres;
mod stream_ledger;
mod vectors;
