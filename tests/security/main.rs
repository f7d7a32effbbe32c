//! Security gaps closed (issue 10): the client side and the relayer's gas. One binary, one
//! module per part.

mod client;
mod gas;
