#!/usr/bin/env bash
# The main job: installs the pinned toolchain, builds the engine and runs
# `x402-upto demo` on a local anvil chain (see README.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PATH="$(bash scripts/tools.sh):$PATH"
export PATH
if cargo run --quiet --release --locked -- help 2>/dev/null | grep -q '^  demo'; then
  exec cargo run --quiet --release --locked -- demo "$@"
fi
echo "x402-upto: the demo subcommand is not built yet; the toolchain is installed in .tools/bin."
echo "Run ./scripts/test.sh for what exists so far."
