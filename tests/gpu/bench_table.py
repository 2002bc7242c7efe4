#!/usr/bin/env python3
"""bench_table.py: a short table from JSON lines of strata-bench engine or bench/peers/torch_peer.py.
Prefill TFLOP/s is effective: 2 x parameters x tokens / time (attention not counted). Decode GB/s is the
weight bytes (bf16) read per step x steps/s, compared with the device copy bandwidth when a "copy" line
(torch_peer.py measures it) is present. usage: bench_table.py FILE.jsonl..."""
import json
import sys

rows, copy_gbs = [], None
for path in sys.argv[1:]:
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("bench") == "copy":
            copy_gbs = r["gbs"]
        else:
            rows.append(r)
for r in rows:
    who = r.get("peer", "strata " + r.get("device", "?"))
    params = r.get("params", 8.03e9)
    if r.get("prompt_len", 0) >= 2048 or r.get("case") == "prefill":
        tps = r.get("prefill_tok_s", 0)
        print(f"{who:24s} prefill {r.get('prompt_len', 2048)} tok: {tps:10.0f} tok/s {2 * params * tps / 1e12:7.1f} TFLOP/s")
    else:
        tps, b = r.get("decode_tok_s", 0), r.get("batch", 1)
        gbs = 2 * params * tps / b / 1e9
        extra = f" ({100 * gbs / copy_gbs:.0f}% of copy {copy_gbs:.0f} GB/s)" if copy_gbs else ""
        steps = f"  step p50 {r['step_ms_p50']:.2f} ms p99 {r['step_ms_p99']:.2f}" if "step_ms_p50" in r else ""
        print(f"{who:24s} decode batch {b:4d}: {tps:10.1f} tok/s  weights {gbs:6.0f} GB/s{extra}{steps}")
if copy_gbs:
    print(f"device copy bandwidth (read+write): {copy_gbs:.0f} GB/s")
