#!/usr/bin/env bash
# Runs every test of the project on a fresh machine (needs only cargo, node, npm; installs
# PostgreSQL and Chromium from the Debian packages when missing):
# installs the pinned toolchain, checks the committed contract artifacts, runs the
# Foundry suite (unit, fuzz, invariant, gas), then the Rust suite (unit, property,
# integration on anvil, crash tests) and builds the benches.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

PATH="$(bash scripts/tools.sh):$PATH"
export PATH

# The PostgreSQL store's tests start their own server (initdb + pg_ctl, Debian binaries).
bash scripts/postgres.sh >/dev/null
# The admin dashboard's test loads the page in headless Chromium (Debian package).
bash scripts/chromium.sh >/dev/null

echo "== contract artifacts match forge build"
bash scripts/export-artifacts.sh --check

echo "== forge test"
(cd contracts && forge test)

echo "== interop peers (stock @x402 SDK, pinned in interop/package-lock.json)"
bash interop/setup.sh >/dev/null
node interop/selftest.mjs

echo "== cargo test"
cargo test --all-targets --locked
cargo test --doc --locked

echo "== benches build"
cargo bench --no-run --locked
