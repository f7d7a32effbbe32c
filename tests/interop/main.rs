//! Our client against our server and the stock `@x402` peers on anvil. One binary, one module
//! per peer.

mod client_anvil;
mod stock_client;
