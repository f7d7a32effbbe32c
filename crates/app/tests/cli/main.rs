//! The binary and its commands end to end: `serve` (config, proxy, hostile HTTP), `get`, the
//! demo, the bench, the stock server against our client. One binary, one module per command.

mod admin_api;
mod admin_cluster;
mod admin_dashboard;
mod bench_smoke;
mod client_cli;
mod demo;
mod grafana;
mod interop_stock_server;
mod mcp;
mod rate_limits;
mod reload;
mod scale_smoke;
mod security_http;
mod serve_config;
mod serve_process;
mod server_proxy;
mod token_routes;
