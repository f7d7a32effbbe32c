#!/usr/bin/env bash
# Side-by-side benchmark (docs/benchmarks.md, "Side-by-side"): our server, the official
# @x402/express batch-settlement server and the one-recovery ceiling, on the same machine, in
# one run, at the same concurrency, measured by the same Rust load generator (`x402-upto bench`).
#
#   bash scripts/bench.sh                 # full: C = 8 and 32, 10 s per target, 3 rounds (≈ 6 min)
#   bash scripts/bench.sh --quick         # CI: C = 4, 2 s per target, 1 round (≈ 30 s after the build)
#   bash scripts/bench.sh --pin [...]     # servers on CPU 0, load generator + anvil on CPU 1 (taskset)
#   bash scripts/bench.sh -- --concurrency 8 --duration 5 --json out.json   # anything after `--`
#                                         # goes to `x402-upto bench` (see its --help)
#
# What it does: installs anvil (scripts/tools.sh) and the stock SDK (interop/setup.sh) if
# missing, builds the release binary (or uses $X402_BENCH_BIN), starts anvil, installs our
# contracts at the SDK's canonical addresses (interop/chain.mjs), funds the payer (anvil #3),
# starts the three servers, runs the load generator once over all of them (back to back per
# concurrency level, repeated per round) and prints the markdown table with the ratios.
# Exit status: non-zero if any request failed or a server's books disagree with what was served.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
pin=0
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --pin) pin=1 ;;
    --) shift; pass+=("$@"); break ;;
    *) pass+=("$1") ;;
  esac
  shift
done

bash scripts/tools.sh >/dev/null
bash interop/setup.sh >/dev/null
anvil_bin="${X402_UPTO_ANVIL:-$root/.tools/bin/anvil}"
bin="${X402_BENCH_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin x402-upto
  bin="$root/target/release/x402-upto"
fi

server_cpu=()
client_cpu=()
note="Unpinned: servers, load generator and anvil share the 2 cores."
if [ "$pin" = 1 ]; then
  command -v taskset >/dev/null || { echo "bench.sh: --pin needs taskset (util-linux)" >&2; exit 2; }
  server_cpu=(taskset -c 0)
  client_cpu=(taskset -c 1)
  note="Pinned: each server on CPU 0 (one at a time is loaded), load generator and anvil on CPU 1."
fi

work="$(mktemp -d -t x402-bench.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Waits for `READY {json}` (or `Listening on`) in $1 and prints the rest of that line.
ready() {
  local file="$1" pattern="$2" pid="$3"
  for _ in $(seq 1 600); do
    if line="$(grep -m1 -- "$pattern" "$file" 2>/dev/null)"; then
      echo "${line#*"$pattern"}"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "bench.sh: process $pid exited; log:" >&2; cat "$file" >&2; return 1; }
    sleep 0.1
  done
  echo "bench.sh: timed out waiting for '$pattern' in $file" >&2
  return 1
}
json_field() { node -e 'const v=JSON.parse(process.argv[1]); console.log(v[process.argv[2]])' "$1" "$2"; }

"${client_cpu[@]}" "$anvil_bin" --host 127.0.0.1 --port 0 >"$work/anvil.log" 2>&1 &
pids+=($!); anvil_pid=$!
addr="$(ready "$work/anvil.log" "Listening on " "$anvil_pid")"
rpc="http://$addr"
deployed="$(node interop/chain.mjs deploy --rpc "$rpc" --key anvil:0)"
token="$(json_field "$deployed" token)"
payer="0x90F79bf6EB2c4f870365E785982E1f101E93b906" # anvil #3, the load generator's payer
# anvil #4 sends the deposits of the diagnostic durability-none server (#5 is ours', #1 the stock one's).
relayer_none="0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a"
node interop/chain.mjs fund --rpc "$rpc" --key anvil:0 --token "$token" --to "$payer" --amount 100000000000000 >/dev/null

"${server_cpu[@]}" "$bin" internal bench-server --rpc "$rpc" --token "$token" --price 1000 --charge 500 \
  >"$work/ours.log" 2>"$work/ours.err" &
pids+=($!); ours_pid=$!
(cd interop && exec "${server_cpu[@]}" node stock-server.mjs --rpc "$rpc" --token "$token" --port 0 --price 1000 --quiet) \
  >"$work/stock.log" 2>"$work/stock.err" &
pids+=($!); stock_pid=$!
"${server_cpu[@]}" "$bin" internal bench-ceiling --price 1000 >"$work/ceiling.log" 2>"$work/ceiling.err" &
pids+=($!); ceiling_pid=$!
extra=(--pids "ours=$ours_pid,stock=$stock_pid,ceiling=$ceiling_pid")
if [ "$quick" = 0 ]; then
  # Diagnostic row: the same server without the durable write (not a goal target).
  "${server_cpu[@]}" "$bin" internal bench-server --rpc "$rpc" --token "$token" --price 1000 --charge 500 \
    --durability none --relayer-key "$relayer_none" >"$work/ours-none.log" 2>"$work/ours-none.err" &
  pids+=($!); none_pid=$!
  extra=(--pids "ours=$ours_pid,stock=$stock_pid,ceiling=$ceiling_pid,ours-none=$none_pid"
         --ours-none "$(json_field "$(ready "$work/ours-none.log" "READY " "$none_pid")" paid)")
fi
ours="$(json_field "$(ready "$work/ours.log" "READY " "$ours_pid")" paid)"
stock="$(json_field "$(ready "$work/stock.log" "READY " "$stock_pid")" paid)"
ceiling="$(json_field "$(ready "$work/ceiling.log" "READY " "$ceiling_pid")" paid)"

if [ "$quick" = 1 ]; then
  defaults=(--concurrency 4 --duration 2 --rounds 1 --budget-fast 20000 --budget-stock 1000)
else
  defaults=(--concurrency 8,32 --duration 10 --rounds 3)
fi
# A flag given after `--` replaces the mode's default for it.
mode=()
for ((i = 0; i < ${#defaults[@]}; i += 2)); do
  case " ${pass[*]} " in
    *" ${defaults[i]} "*) ;;
    *) mode+=("${defaults[i]}" "${defaults[i + 1]}") ;;
  esac
done
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') × $(nproc)"
status=0
"${client_cpu[@]}" "$bin" bench --ours "$ours" --stock "$stock" --ceiling "$ceiling" "${extra[@]}" "${mode[@]}" \
  --note "Machine: $cpu, $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start. $note" \
  "${pass[@]}" || status=$?
if [ "$status" != 0 ]; then
  echo "bench.sh: the load generator reported a failure (exit $status); server logs:" >&2
  tail -n 20 "$work"/*.err >&2 || true
fi
exit "$status"
