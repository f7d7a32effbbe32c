//! x402-upto: a settlement engine for x402 v2 `batch-settlement` on EVM.
