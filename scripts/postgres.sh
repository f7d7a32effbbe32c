#!/usr/bin/env bash
# Makes sure the PostgreSQL server binaries (initdb, pg_ctl, postgres) are installed: the
# tests of the shared store start a throwaway server of their own. Installs the Debian
# `postgresql` package when they are missing (needs root or sudo); prints the bin directory.
set -euo pipefail
find_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}
bin="$(find_bin)"
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  echo "installing postgresql (Debian package)" >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  # The package starts a cluster of its own; the tests do not use it.
  "${sudo_cmd[@]}" service postgresql stop >/dev/null 2>&1 || true
  bin="$(find_bin)"
fi
[ -x "$bin/initdb" ] || { echo "postgres.sh: no initdb after installing postgresql" >&2; exit 1; }
echo "$bin"
