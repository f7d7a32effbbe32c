#!/usr/bin/env bash
# Installs interop/node_modules from the committed lock file (npm ci).
# Idempotent: skips when node_modules holds an install of the same lock file.
# Prints the interop directory.
set -euo pipefail
dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
stamp="$dir/node_modules/.interop-lock"
if ! cmp -s "$dir/package-lock.json" "$stamp" 2>/dev/null \
   || [ ! -f "$dir/node_modules/@x402/evm/package.json" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$dir/package-lock.json" "$stamp"
fi
echo "$dir"
