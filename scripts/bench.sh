#!/usr/bin/env bash
# Side-by-side benchmark (docs/benchmarks.md, "Side-by-side"): our server (on sled, and on
# PostgreSQL with one and two instances), the official @x402/express batch-settlement server
# and the one-recovery ceiling, on the same machine, in one run, at the same concurrency,
# measured by the same Rust load generator (`x402-upto bench`).
#
#   bash scripts/bench.sh                 # full: C = 8 and 32, 10 s per target, 3 rounds (≈ 6 min)
#   bash scripts/bench.sh --quick         # CI: C = 4, 2 s per target, 1 round (≈ 30 s after the build)
#   bash scripts/bench.sh --pin [...]     # servers on CPU 0, load generator + anvil on CPU 1 (taskset)
#   bash scripts/bench.sh -- --concurrency 8 --duration 5 --json out.json   # anything after `--`
#                                         # goes to `x402-upto bench` (see its --help)
#   bash scripts/bench.sh --store-metrics 127.0.0.1:9471 [...]   # our sled server exports
#                                         # Prometheus metrics there; the store's (x402_store_*)
#                                         # are printed after the run
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
store_metrics=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --pin) pin=1 ;;
    --store-metrics) shift; store_metrics="${1:?--store-metrics needs an address}" ;;
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
pg_bin=""
as_postgres=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$pg_bin" ] && [ -f "$work/pg/data/postmaster.pid" ]; then
    "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  fi
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

ours_metrics=()
[ -n "$store_metrics" ] && ours_metrics=(--metrics "$store_metrics")
"${server_cpu[@]}" "$bin" internal bench-server --rpc "$rpc" --token "$token" --price 1000 --charge 500 \
  "${ours_metrics[@]}" >"$work/ours.log" 2>"$work/ours.err" &
pids+=($!); ours_pid=$!
(cd interop && exec "${server_cpu[@]}" node stock-server.mjs --rpc "$rpc" --token "$token" --port 0 --price 1000 --quiet) \
  >"$work/stock.log" 2>"$work/stock.err" &
pids+=($!); stock_pid=$!
"${server_cpu[@]}" "$bin" internal bench-ceiling --price 1000 >"$work/ceiling.log" 2>"$work/ceiling.err" &
pids+=($!); ceiling_pid=$!
# Our server on the PostgreSQL store, one instance and two (each its own relayer: anvil #7,
# #8, #9), each row on its own database of one throwaway cluster on the same cores, fsync on.
pg_bin="$(bash scripts/postgres.sh)"
mkdir -p "$work/pg"
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$work" "$work/pg"
  as_postgres=(runuser -u postgres --)
fi
pg_port="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
"${as_postgres[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust --no-sync -E UTF8 >"$work/pg-init.log" 2>&1
"${server_cpu[@]}" "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w \
  -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=100" start >/dev/null
pg_pid="$(head -n 1 "$work/pg/data/postmaster.pid")"
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres pg1
"$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres pg2
pg_url() { echo "postgres://postgres@127.0.0.1:$pg_port/$1"; }
pg_server() { # name, database, relayer key
  "${server_cpu[@]}" "$bin" internal bench-server --rpc "$rpc" --token "$token" --price 1000 --charge 500 \
    --postgres "$(pg_url "$2")" --instance "$1" --relayer-key "$3" >"$work/$1.log" 2>"$work/$1.err" &
  pids+=($!)
}
pg_server ours-pg pg1 0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356
pg1_pid=$!
pg_server ours-pg2-a pg2 0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97
pg2a_pid=$!
pg_server ours-pg2-b pg2 0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6
pg2b_pid=$!
ours_pg="$(json_field "$(ready "$work/ours-pg.log" "READY " "$pg1_pid")" paid)"
ours_pg2="$(json_field "$(ready "$work/ours-pg2-a.log" "READY " "$pg2a_pid")" paid),$(json_field "$(ready "$work/ours-pg2-b.log" "READY " "$pg2b_pid")" paid)"
pg_pids="ours-pg=$pg1_pid,ours-pg2=$pg2a_pid+$pg2b_pid,db=$pg_pid"

extra=(--pids "ours=$ours_pid,stock=$stock_pid,ceiling=$ceiling_pid,$pg_pids" --ours-pg "$ours_pg" --ours-pg2 "$ours_pg2")
if [ "$quick" = 0 ]; then
  # Diagnostic row: the same server without the durable write (not a goal target).
  "${server_cpu[@]}" "$bin" internal bench-server --rpc "$rpc" --token "$token" --price 1000 --charge 500 \
    --durability none --relayer-key "$relayer_none" >"$work/ours-none.log" 2>"$work/ours-none.err" &
  pids+=($!); none_pid=$!
  extra=(--pids "ours=$ours_pid,stock=$stock_pid,ceiling=$ceiling_pid,ours-none=$none_pid,$pg_pids"
         --ours-pg "$ours_pg" --ours-pg2 "$ours_pg2"
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
if [ -n "$store_metrics" ]; then
  # Sums and counts over the server's whole life (warm-up included). The quantiles are the
  # exporter's, over its last minute, which other targets' turns may have emptied.
  echo
  echo "Our sled server's group commits (x402_store_*, http://$store_metrics/metrics):"
  curl -fsS "http://$store_metrics/metrics" | awk '
    /^x402_store_/ { v[$1] = $2 }
    END {
      n = v["x402_store_batch_writes_count"]
      if (n == 0) { print "  (no commits scraped)"; exit }
      printf "  commits %d, writes per commit %.1f, write %.0f us and gather %.0f us per commit (means)\n",
        n, v["x402_store_batch_writes_sum"] / n,
        1e6 * v["x402_store_write_seconds_sum"] / n, 1e6 * v["x402_store_gather_seconds_sum"] / n
      for (k in v) if (k ~ /^x402_store_gathers_total/) printf "  %s %d\n", k, v[k]
    }' || echo "  (no scrape)"
fi
if [ "$status" != 0 ]; then
  echo "bench.sh: the load generator reported a failure (exit $status); server logs:" >&2
  tail -n 20 "$work"/*.err >&2 || true
fi
exit "$status"
