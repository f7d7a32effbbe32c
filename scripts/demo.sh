#!/usr/bin/env bash
# The main job: installs the pinned toolchain (anvil comes from it), builds the engine and
# runs `x402-upto demo` on a local anvil chain. Extra arguments go to the demo
# (e.g. --channels 10 --requests 100); see `x402-upto demo --help`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PATH="$(bash scripts/tools.sh):$PATH"
export PATH
exec cargo run --quiet --release --locked -- demo "$@"
