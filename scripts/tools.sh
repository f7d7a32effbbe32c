#!/usr/bin/env bash
# Installs the project's offline toolchain into .tools/ (git-ignored):
# forge, anvil and cast from npm, solcjs behind a `solc` wrapper, and
# OpenZeppelin contracts. Idempotent: a second run with an unchanged lock
# file does nothing. Prints the bin folder to put on PATH.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

if ! cmp -s "$root/tools/package-lock.json" "$tools/package-lock.json" 2>/dev/null \
   || [ ! -x "$tools/node_modules/@foundry-rs/forge-linux-amd64/bin/forge" ]; then
  cp "$root/tools/package.json" "$root/tools/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

for t in forge anvil cast; do
  ln -sf "$tools/node_modules/@foundry-rs/$t-linux-amd64/bin/$t" "$tools/bin/$t"
done
cat > "$tools/bin/solc" <<SH
#!/usr/bin/env bash
exec node "$root/scripts/solc-wrapper.mjs" "\$@"
SH
chmod +x "$tools/bin/solc"

# contracts/ resolves @openzeppelin through this link (see foundry.toml remappings).
mkdir -p "$root/contracts/lib"
ln -sfn "$tools/node_modules/@openzeppelin/contracts" "$root/contracts/lib/openzeppelin-contracts"

echo "$tools/bin"
