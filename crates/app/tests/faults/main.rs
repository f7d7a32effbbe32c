//! The binary killed mid-work: no acknowledged voucher lost, nothing claimed twice. One binary,
//! one module per harness; `cluster`: three `serve` instances on one PostgreSQL store.

mod cluster;
mod crash;
mod kill;
