#!/usr/bin/env python3
"""Prints the benchmark table and target ratios of the last `cargo bench --bench core` run.

Reads criterion's target/criterion/**/new/{benchmark,estimates}.json. A ratio is
(rate of the measured path) / (rate of raw libsecp256k1 recovery at the same thread count),
both from the same run.
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
ns = {}
for bench in root.glob("**/new/benchmark.json"):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    point = (est.get("slope") or est["mean"])["point_estimate"]
    ns[meta["full_id"]] = point

if not ns:
    sys.exit(f"no criterion results under {root}")

print("| benchmark | time/op | ops/s |")
print("|---|---:|---:|")
for name in sorted(ns):
    t = ns[name]
    unit = f"{t / 1000:.2f} µs" if t >= 1000 else f"{t:.0f} ns"
    print(f"| `{name}` | {unit} | {1e9 / t:,.0f} |")

raw = {1: ns.get("recover/alloy_libsecp256k1/1t"), 2: ns.get("recover/alloy_libsecp256k1/2t")}
targets = [
    ("ledger_mem/1ch/1t", 1, 0.9),
    ("ledger_mem/10k/1t", 1, 0.9),
    ("ledger_mem/2ch/2t", 2, 0.9),
    ("ledger_mem/10k/2t", 2, 0.9),
    ("store_conc/group+fdatasync/10k/64c/1t", 1, 0.8),
    ("store_conc/group+fdatasync/10k/64c/2t", 2, 0.8),
    ("store_conc/group/10k/64c/1t", 1, 0.8),
    ("store_conc/group/10k/64c/2t", 2, 0.8),
    ("store_conc/none/10k/64c/2t", 2, None),
]
print()
print("| path | threads | ratio to raw recovery | target | met |")
print("|---|---:|---:|---:|---|")
for name, threads, target in targets:
    if name not in ns or not raw[threads]:
        continue
    ratio = raw[threads] / ns[name]
    met = "—" if target is None else ("yes" if ratio >= target else "**no**")
    tgt = "—" if target is None else f"≥ {target}"
    print(f"| `{name}` | {threads} | {ratio:.2f} | {tgt} | {met} |")
