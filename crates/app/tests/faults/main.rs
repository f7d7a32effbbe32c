//! The binary killed mid-work: no acknowledged voucher lost, nothing claimed twice. One binary,
//! one module per harness.

mod crash;
mod kill;
