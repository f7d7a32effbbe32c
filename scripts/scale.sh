#!/usr/bin/env bash
# Scale benchmark (docs/benchmarks.md, "Scale"): memory per idle channel, restart time, paid
# req/s and claim cost at 1,000 / 100,000 / 1,000,000 channels, in one run
# (`x402-upto bench-scale`, crates/app/src/bench/scale/).
#
#   bash scripts/scale.sh                      # full: 3 sizes, C = 32, 10 s windows, 3 rounds,
#                                              # claims of 1,000 and 10,000 channels on anvil
#   bash scripts/scale.sh --quick              # smoke: 1,000 and 10,000 channels, 2 s, 1 round
#   bash scripts/scale.sh -- --claims 0 --rounds 5   # anything after `--` goes to
#                                              # `x402-upto bench-scale` (see its --help;
#                                              # `--claims 0`: no anvil)
#
# Seeded stores are kept in $X402_SCALE_CACHE (default target/scale-seeds) and reused: seeding a
# million channels takes a while, and every run serves a fresh copy of the seed. The plot goes to
# docs/scale.svg and every measurement to target/scale.json.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --) shift; pass+=("$@"); break ;;
    *) pass+=("$1") ;;
  esac
  shift
done

bash scripts/tools.sh >/dev/null
export X402_UPTO_ANVIL="${X402_UPTO_ANVIL:-$root/.tools/bin/anvil}"
bin="${X402_BENCH_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet --bin x402-upto
  bin="$root/target/release/x402-upto"
fi
cache="${X402_SCALE_CACHE:-$root/target/scale-seeds}"
mkdir -p "$cache"

if [ "$quick" = 1 ]; then
  defaults=(--channels 1000,10000 --duration 2 --rounds 1 --claims 1000 --svg "$root/target/scale-quick.svg"
            --json "$root/target/scale.json")
else
  defaults=(--svg "$root/docs/scale.svg" --json "$root/target/scale.json")
fi
# A flag given after `--` replaces the mode's default for it.
mode=()
for ((i = 0; i < ${#defaults[@]}; i += 2)); do
  case " ${pass[*]} " in
    *" ${defaults[i]} "*) ;;
    *) mode+=("${defaults[i]}" "${defaults[i + 1]}") ;;
  esac
done
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//') × $(nproc), $(free -g | awk '/^Mem:/ {print $2}') GiB"
exec "$bin" bench-scale --seed-cache "$cache" "${mode[@]}" \
  --note "Machine: $cpu, $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg) at the start. The servers, the load generator and anvil share the cores." \
  "${pass[@]}"
