#!/usr/bin/env python3
"""Where a decode step of the twin's genai graph spends its time, in Python onnxruntime (2 intra-op
threads, onnxruntime's own profiler): a prompt of PAST tokens, then STEPS single-token steps;
milliseconds per step by operator type and for the heaviest nodes, plus the step's wall time.

usage: profile.py TWIN_DIR [PAST] [STEPS]   (any python with numpy and onnxruntime: tools/twin's
venv or the bench's; bench/twin.py runs it where a goal is missed)
"""

import collections
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    folder = os.path.join(sys.argv[1], "genai")
    past_len = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    config = json.load(open(os.path.join(folder, "config.json")))
    layers, kv, hd = config["num_hidden_layers"], config["num_key_value_heads"], config["head_dim"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 2, 1
    sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    past = {f"past_key_values.{i}.{k}": np.zeros((1, kv, 0, hd), np.float32) for i in range(layers) for k in ("key", "value")}

    def run(ids, done):
        out = dict(zip(names, sess.run(None, {"input_ids": np.array([ids], np.int64),
                                              "attention_mask": np.ones((1, done + len(ids)), np.int64), **past})))
        for key in past:
            past[key] = out[key.replace("past_key_values", "present")]
        return int(np.argmax(out["logits"][0, -1]))

    rng = np.random.default_rng(0)
    token = run([int(t) for t in rng.integers(0, 49152, past_len)], 0)
    done = past_len
    for _ in range(3):
        token = run([token], done)
        done += 1
    t = time.perf_counter()
    for _ in range(steps):
        token = run([token], done)
        done += 1
    wall = (time.perf_counter() - t) / steps * 1e3
    # A second session with the profiler on, the same steps (its overhead stays out of `wall`).
    opts.enable_profiling = True
    opts.profile_file_prefix = "/tmp/twin-profile"
    sess = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
    for key in past:
        past[key] = past[key][:, :, :past_len]
    done = past_len
    for _ in range(steps):
        token = run([token], done)
        done += 1
    path = sess.end_profiling()
    trace = json.load(open(path))
    os.remove(path)
    by_op, by_node = collections.Counter(), collections.Counter()
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / steps
            node = e["name"][:-len("_kernel_time")]
            kind = node.split("/")[-1] if "/" in node else node
            by_node[kind] += e["dur"] / 1e3 / steps
    print(f"decode step at {past_len}+ positions: {wall:.1f} ms wall (no profiler); by operator, ms per step:")
    for op, ms in by_op.most_common():
        print(f"  {op:36s} {ms:8.2f}")
    print("by node kind (summed over layers), ms per step:")
    for node, ms in by_node.most_common(8):
        print(f"  {node:36s} {ms:8.2f}")


if __name__ == "__main__":
    main()
