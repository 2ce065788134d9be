#!/usr/bin/env python3
"""Where a decode step goes: ONNX Runtime's own per-operator profile of the fused decoder's
decode steps (one new token per row) at 1, 8 and 16 rows and 100, 250 and 1,000 positions of
past, 2 intra-op threads, as the daemon runs them (one shared KV buffer, rows batched in one
call). Prints, per shape, the time of the graph's nodes by operator type (MatMulNBits,
GroupQueryAttention, the rest), from the profile's node events, and the step's wall time in this
Python harness, which also binds every KV buffer anew and copies every output back each step
(at 16 rows x 1,000 positions most of it): the node times are the figures to compare.

    python3 bench/decode_profile.py FUSED_MODEL_DIR [JSON]
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "fused-decoder"))
from batch_invariance import Decoder  # noqa: E402  (the shared-buffer decode call)
from prefill_profile import ms_by_op, profiled_session  # noqa: E402  (the same profiling)

ROWS = (1, 8, 16)
PASTS = (100, 250, 1000)
WARM, STEPS = 3, 20


def profile(model_dir, config, rows, past, vocab):
    """(seconds per step, {op type: ms per step}) of STEPS decode steps of `rows` rows holding
    `past` positions each (KV of random values: the time does not depend on them), profiled."""
    sess = profiled_session(model_dir, "decode")
    dec = Decoder(sess, config)
    rng = np.random.default_rng(rows * 10000 + past)
    bufs = dec.buffers(rows, past + WARM + STEPS + 1)
    for b in bufs:
        b[...] = rng.standard_normal(b.shape, dtype=np.float32)
    done = past
    for _ in range(WARM):
        dec.run(bufs, [[int(t)] for t in rng.integers(100, vocab - 100, rows)], [done] * rows)
        done += 1
    t = time.perf_counter()
    for _ in range(STEPS):
        dec.run(bufs, [[int(t)] for t in rng.integers(100, vocab - 100, rows)], [done] * rows)
        done += 1
    seconds = (time.perf_counter() - t) / STEPS
    return seconds, ms_by_op(sess, WARM, STEPS)  # the timed steps: after the warm-up runs


def main():
    model_dir = sys.argv[1]
    config = json.load(open(os.path.join(model_dir, "genai_config.json")))
    vocab = config["model"]["vocab_size"]
    out = []
    print("| rows | past | step ms (harness) | nodes ms | MatMulNBits | GroupQueryAttention | the rest | nodes ms per row |")
    print("|---|---|---|---|---|---|---|---|")
    for rows in ROWS:
        for past in PASTS:
            seconds, by_op = profile(model_dir, config, rows, past, vocab)
            nodes = sum(by_op.values())
            mm, gqa = by_op.get("MatMulNBits", 0.0), by_op.get("GroupQueryAttention", 0.0)
            rest = nodes - mm - gqa
            out.append({"rows": rows, "past": past, "step_ms": 1e3 * seconds, "nodes_ms": nodes, "ops_ms": by_op})
            print(f"| {rows} | {past} | {1e3 * seconds:.2f} | {nodes:.2f} | {mm:.2f} ({100 * mm / nodes:.0f}%) | "
                  f"{gqa:.2f} ({100 * gqa / nodes:.0f}%) | {rest:.2f} ({100 * rest / nodes:.0f}%) | "
                  f"{nodes / rows:.2f} |", flush=True)
    if len(sys.argv) > 2:
        json.dump(out, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
