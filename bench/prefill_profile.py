#!/usr/bin/env python3
"""Where a long prompt's prefill goes: ONNX Runtime's own per-operator profile of the fused
decoder prefilling prompts of 512, 2,048 and 8,000 tokens in 512-token calls (the daemon's
largest prefill call), 2 intra-op threads, as the daemon runs it (shared KV buffer). Prints, per
length, tokens/s and the share of each operator type (MatMulNBits, GroupQueryAttention, the
rest), from the profile's node events.

    python3 bench/prefill_profile.py FUSED_MODEL_DIR [JSON]
"""

import collections
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "fused-decoder"))
from batch_invariance import Decoder  # noqa: E402  (the shared-buffer decode call)

LENGTHS = (512, 2048, 8000)
CALL = 512


def profiled_session(model_dir, name):
    """A session of the model with ONNX Runtime's profiler on, 2 intra-op threads."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), name)
    return ort.InferenceSession(os.path.join(model_dir, "model.onnx"), opts, providers=["CPUExecutionProvider"])


def ms_by_op(sess, warm_runs, per=1):
    """{op type: ms / per} of the node events after the first `warm_runs` runs of the profile."""
    events = json.load(open(sess.end_profiling()))
    runs = [e for e in events if e.get("name") == "model_run"]
    after = runs[warm_runs - 1]["ts"] + runs[warm_runs - 1]["dur"] if len(runs) >= warm_runs else 0
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= after:
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / per
    return dict(by_op)


def profile(model_dir, config, n, vocab):
    """(seconds, {op type: ms}) of prefilling n tokens in CALL-token calls, profiled."""
    sess = profiled_session(model_dir, "prefill")
    dec = Decoder(sess, config)
    ids = np.random.default_rng(n).integers(100, vocab - 100, n).tolist()
    bufs = dec.buffers(1, n + 8)
    dec.run(bufs, [ids[:CALL]], [0])  # warm-up, overwritten below
    t = time.perf_counter()
    done = 0
    while done < n:
        chunk = ids[done:done + CALL]
        dec.run(bufs, [chunk], [done])
        done += len(chunk)
    seconds = time.perf_counter() - t
    return seconds, ms_by_op(sess, 1)  # the timed calls: after the warm-up run


def main():
    model_dir = sys.argv[1]
    config = json.load(open(os.path.join(model_dir, "genai_config.json")))
    vocab = config["model"]["vocab_size"]
    rows = []
    for n in LENGTHS:
        seconds, by_op = profile(model_dir, config, n, vocab)
        total = sum(by_op.values())
        top = sorted(by_op.items(), key=lambda kv: -kv[1])
        rows.append({"tokens": n, "tokens_per_s": n / seconds, "seconds": seconds, "node_ms": total,
                     "ops_ms": dict(top)})
        shares = ", ".join(f"{op} {100 * ms / total:.1f}%" for op, ms in top[:6])
        print(f"{n:5d} tokens: {n / seconds:6.0f} tokens/s ({seconds:.1f} s); nodes {total:.0f} ms: {shares}", flush=True)
    if len(sys.argv) > 2:
        json.dump(rows, open(sys.argv[2], "w"), indent=1)


if __name__ == "__main__":
    main()
