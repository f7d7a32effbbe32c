#!/usr/bin/env bash
# Makes sure a headless Chromium is installed: the admin dashboard's test loads the page in a
# real browser (`chromium --headless --dump-dom`, `--screenshot`). Installs the Debian
# `chromium` package when it is missing (needs root or sudo); prints the binary's path.
set -euo pipefail
find_bin() {
  command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true
}
bin="$(find_bin)"
if [ -z "$bin" ]; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  echo "installing chromium (Debian package)" >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  bin="$(find_bin)"
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "chromium.sh: no chromium after installing it" >&2; exit 1; }
echo "$bin"
