#!/usr/bin/env bash
# Builds contracts/ and writes the artifacts the Rust side deploys and binds to
# (alloy's `sol!` reads this Foundry artifact subset):
#   contracts/artifacts/{UptoEscrow,Erc3009DepositCollector,MockUSDC,MockERC1271Wallet}.json
#   = {"abi": [...], "bytecode": {"object": "0x..."}, "deployedBytecode": {"object": "0x..."}}
# pretty-printed with two spaces and a trailing newline, so the files are stable.
#
#   scripts/export-artifacts.sh           regenerate the committed artifacts
#   scripts/export-artifacts.sh --check   exit 1 if the committed artifacts differ
#                                         from a fresh build (for CI)
#
# Bytecode does not depend on the checkout path: contracts/foundry.toml turns
# off the metadata hash and CBOR trailer.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
contracts="$root/contracts"
committed="$contracts/artifacts"
names=(UptoEscrow Erc3009DepositCollector MockUSDC MockERC1271Wallet)

mode=write
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

PATH="$(bash "$root/scripts/tools.sh"):$PATH"
# Tests and scripts do not contribute to these artifacts; skipping them keeps the CI check quick.
(cd "$contracts" && forge build --skip test --skip script >&2)

fresh="$(mktemp -d)"
trap 'rm -rf "$fresh"' EXIT

node - "$contracts/out" "$fresh" "${names[@]}" <<'JS'
const fs = require("node:fs");
const path = require("node:path");
const [outDir, dest, ...names] = process.argv.slice(2);
for (const name of names) {
  const file = path.join(outDir, `${name}.sol`, `${name}.json`);
  const artifact = JSON.parse(fs.readFileSync(file, "utf8"));
  const subset = {
    abi: artifact.abi,
    bytecode: { object: artifact.bytecode.object },
    deployedBytecode: { object: artifact.deployedBytecode.object },
  };
  for (const key of ["bytecode", "deployedBytecode"]) {
    if (!/^0x[0-9a-f]+$/.test(subset[key].object)) throw new Error(`${file}: ${key}.object is not hex bytecode`);
  }
  fs.writeFileSync(path.join(dest, `${name}.json`), JSON.stringify(subset, null, 2) + "\n");
}
JS

if [ "$mode" = check ]; then
  stale=()
  for name in "${names[@]}"; do
    cmp -s "$fresh/$name.json" "$committed/$name.json" || stale+=("contracts/artifacts/$name.json")
  done
  if [ "${#stale[@]}" -ne 0 ]; then
    echo "export-artifacts: out of date: ${stale[*]}" >&2
    echo "export-artifacts: the contracts changed since the artifacts were exported;" \
         "run scripts/export-artifacts.sh and commit the result" >&2
    exit 1
  fi
  echo "export-artifacts: contracts/artifacts is up to date" >&2
else
  mkdir -p "$committed"
  for name in "${names[@]}"; do
    cp "$fresh/$name.json" "$committed/$name.json"
    echo "wrote contracts/artifacts/$name.json" >&2
  done
fi
